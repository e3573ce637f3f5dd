"""Stage progress across the kernel boundary: the file a stage writes, the watcher the
runner runs, and how the command line shows it (in place on a terminal, not in a file)."""

from __future__ import annotations

import io
import os
import time

from mlfolio import cli, progress


def test_watch_emits_each_change_once_until_the_block_ends(tmp_path):
    path = tmp_path / "logs" / "tune_progress.json"
    seen: list[str] = []
    with progress.watch(path, lambda d: f"{d['done']}/{d['total']}", seen.append, interval=0.05):
        time.sleep(0.2)  # nothing written yet: nothing shown
        for done in (1, 2, 2):
            progress.write(path, {"done": done, "total": 3})
            time.sleep(0.2)
    assert seen == ["1/3", "2/3"]
    progress.write(path, {"done": 3, "total": 3})
    time.sleep(0.2)
    assert seen == ["1/3", "2/3"]  # the watcher stopped with the block
    path.write_text("{not json")  # a torn or foreign file reads as no progress
    assert progress.read(path) is None
    assert progress.read(tmp_path / "missing.json") is None


def _read_all(master: int) -> str:
    """What the terminal got, once its slave end is closed (one read may return only
    part of it; the master then reads EIO)."""
    chunks = []
    try:
        while chunk := os.read(master, 4096):
            chunks.append(chunk)
    except OSError:  # EIO: the slave end is closed and everything was read
        pass
    finally:
        os.close(master)
    return b"".join(chunks).decode()


def test_terminal_redraws_progress_in_place_and_clears_it_for_the_next_line():
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        term = cli._Terminal(tty)
        assert term.tty
        term.echo("[4/7] tune       running ...")
        term.progress("[4/7] tune       1/4 trials")
        term.progress("[4/7] tune       2/4 trials, best CV ROC AUC 0.8412 (trial 1)")
        term.echo("[4/7] tune       ok in 9.1s: 4/4 trials")
    out = _read_all(master)
    assert out == (
        "[4/7] tune       running ...\r\n"
        "\r\x1b[K[4/7] tune       1/4 trials"
        "\r\x1b[K[4/7] tune       2/4 trials, best CV ROC AUC 0.8412 (trial 1)"
        "\r\x1b[K[4/7] tune       ok in 9.1s: 4/4 trials\r\n"
    )


def test_progress_is_left_out_of_a_file_or_pipe():
    stream = io.StringIO()
    term = cli._Terminal(stream)
    term.echo("a")
    term.progress("transient")
    term.echo("b")
    assert stream.getvalue() == "a\nb\n"


def test_tune_summary_reads_the_trials_and_best_from_tune_json(tmp_path):
    from mlfolio.files import write_json
    from mlfolio.pipeline import terminal

    assert terminal.tune_summary(tmp_path, 30) == ""  # tune did not run
    write_json(tmp_path / "tune.json", {"enabled": False})
    assert terminal.tune_summary(tmp_path, 30) == ": tuning disabled"
    write_json(
        tmp_path / "tune.json",
        {
            "enabled": True,
            "models": {},
            "trial_states": {"COMPLETE": 10, "PRUNED": 2, "FAIL": 1},
            "best_cv_roc_auc": 0.84661,
            "best_trial": 7,
        },
    )
    assert terminal.tune_summary(tmp_path, 30) == (
        ": 12/30 trials (2 pruned, 1 failed), best CV ROC AUC 0.8466 (trial 7)"
    )
