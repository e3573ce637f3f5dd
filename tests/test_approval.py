"""Approval between the gate and the champion (registry.require_approval), on SQLite and on
PostgreSQL: the compare-and-set under the promotion lock, raced by real threads."""

from __future__ import annotations

import json
import threading

import mlflow
import pytest

from mlfolio import approval, cli, registry
from mlfolio.errors import ApprovalRefused, ConfigError

from .test_registry import _versions, fitted, store  # noqa: F401 - fixtures

GATE = "gate passed: PASS ROC AUC gain over champion v1"


def _pending(store, tmp_path, fitted, n: int = 3) -> list[registry.ModelRef]:  # noqa: F811
    """v1 champion; v2 asked for approval against it (as register does)."""
    refs = _versions(store, tmp_path, fitted, n)
    assert registry.promote(refs[0], None, "first", "/runs/a").promoted
    asked = approval.request(refs[1], "1", GATE, "/runs/b")
    assert asked.done and asked.why_not is None
    return refs


def _race(*calls):
    """Run each call in its own thread, released together; (results, errors)."""
    barrier = threading.Barrier(len(calls))
    results, errors = [], []

    def run(call):
        barrier.wait()
        try:
            results.append(call())
        except Exception as exc:  # noqa: BLE001 - what the loser got is the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_pending_then_approved_records_who_when_and_why(store, tmp_path, fitted):  # noqa: F811
    _pending(store, tmp_path, fitted)
    assert registry.get_alias("m", registry.CHAMPION).version == "1"
    assert registry.get_alias("m", approval.PENDING).version == "2"
    found = approval.pending("m")
    assert found["version"] == "2" and found["compared_against"] == "1"
    assert not found["stale"] and found["age_s"] >= 0
    assert found["command"] == "mlfolio approve m 2 --by NAME"

    done = approval.decide("approve", "m", "2", "alice", "reviewed the segments")
    assert done.done and done.champion == "2" and done.compared_against == "1"
    assert registry.get_alias("m", registry.CHAMPION).version == "2"
    assert registry.get_alias("m", approval.PENDING) is None
    assert approval.pending("m") is None
    moves = [(e["alias"], e["previous_version"], e["version"]) for e in registry.alias_history("m")]
    assert moves[-3:] == [
        (approval.PENDING, None, "2"),
        (registry.CHAMPION, "1", "2"),
        (approval.PENDING, "2", None),
    ]
    promoted = registry.alias_history("m")[-2]
    assert promoted["by"] == "alice" and promoted["note"] == "reviewed the segments"
    assert promoted["reason"] == "approved by alice: reviewed the segments"
    assert promoted["compared_against"] == "1" and promoted["run_dir"] == "/runs/b"
    tags = mlflow.MlflowClient().get_model_version("m", "2").tags
    assert tags[approval.STATUS_TAG] == "approved" and tags["mlfolio.promoted_by"] == "alice"
    info = json.loads(tags[approval.INFO_TAG])
    assert info["decided_by"] == "alice" and info["note"] == "reviewed the segments"
    with pytest.raises(ApprovalRefused, match="m v2 is not pending approval: approved by alice"):
        approval.decide("approve", "m", "2", "bob")
    with pytest.raises(ApprovalRefused, match="m v3 is not pending approval .it never was"):
        approval.decide("approve", "m", "3", "bob")
    with pytest.raises(ApprovalRefused, match="m has no version 9"):
        approval.decide("reject", "m", "9", "bob")
    with pytest.raises(ConfigError, match="--by: give the name"):
        approval.decide("approve", "m", "2", "  ")


def test_two_approvers_at_once_exactly_one_wins(store, tmp_path, fitted):  # noqa: F811
    _pending(store, tmp_path, fitted)
    won, lost = _race(
        *[lambda who=who: approval.decide("approve", "m", "2", who) for who in "abcd"]
    )
    assert len(won) == 1 and len(lost) == 3
    assert all(isinstance(e, ApprovalRefused) for e in lost)
    assert all(f"approved by {won[0].by}" in str(e) for e in lost)
    champion_moves = [e for e in registry.alias_history("m") if e["alias"] == "champion"]
    assert [(e["previous_version"], e["version"]) for e in champion_moves] == [
        (None, "1"),
        ("1", "2"),
    ]


def test_approve_and_reject_at_once_one_decides(store, tmp_path, fitted):  # noqa: F811
    _pending(store, tmp_path, fitted)
    won, lost = _race(
        lambda: approval.decide("approve", "m", "2", "alice"),
        lambda: approval.decide("reject", "m", "2", "bob"),
    )
    assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], ApprovalRefused)
    status, info = approval.status("m", "2")
    assert status == ("approved" if won[0].action == "approve" else "rejected")
    assert info["decided_by"] == won[0].by
    champion = registry.get_alias("m", registry.CHAMPION).version
    assert champion == ("2" if won[0].action == "approve" else "1")


def test_approve_after_the_champion_moved_is_refused(store, tmp_path, fitted):  # noqa: F811
    refs = _pending(store, tmp_path, fitted)
    # another run promoted v3 over v1 while v2 waited
    assert registry.promote(refs[2], "1", "beats v1", "/runs/c").promoted
    assert approval.pending("m")["stale"]
    with pytest.raises(ApprovalRefused) as refused:
        approval.decide("approve", "m", "2", "alice")
    text = str(refused.value)
    assert "champion moved: the gate compared against v1, but m@champion is now v3" in text
    assert "/runs/c" in text and "v2 not approved: it stays @pending-approval" in text
    assert "mlfolio reject m 2 --by NAME" in text
    assert registry.get_alias("m", registry.CHAMPION).version == "3"
    assert registry.get_alias("m", approval.PENDING).version == "2"  # nothing changed
    assert approval.status("m", "2")[0] == "pending"
    # rejecting it still works, and leaves the champion alone
    done = approval.decide("reject", "m", "2", "alice", "stale: compared with v1")
    assert done.champion == "3" and registry.get_alias("m", approval.PENDING) is None
    assert registry.get_alias("m", registry.CHAMPION).version == "3"
    assert approval.status("m", "2")[0] == "rejected"
    removed = registry.alias_history("m")[-1]
    assert removed["alias"] == approval.PENDING and removed["removed"] is True
    assert removed["by"] == "alice" and removed["decision"] == "rejected"


def test_approve_against_a_concurrent_promotion_compare_and_set_holds(
    store,  # noqa: F811
    tmp_path,
    fitted,  # noqa: F811
):
    """An approval of v2 and a promotion of v3 that both compared against v1, released
    together: exactly one moves champion, and every champion move records the version
    it replaced as the one it was compared against."""
    refs = _pending(store, tmp_path, fitted)
    won, lost = _race(
        lambda: approval.decide("approve", "m", "2", "alice"),
        lambda: registry.promote(refs[2], "1", "beats v1", "/runs/c"),
    )
    moved = [r for r in won if getattr(r, "done", False) or getattr(r, "promoted", False)]
    assert len(moved) == 1
    if lost:  # the approval came second
        assert isinstance(lost[0], ApprovalRefused) and "champion moved" in str(lost[0])
    else:  # the promotion came second
        assert not next(r for r in won if isinstance(r, registry.Promotion)).promoted
    champion_moves = [e for e in registry.alias_history("m") if e["alias"] == "champion"]
    assert len(champion_moves) == 2
    assert all(e["previous_version"] == e["compared_against"] for e in champion_moves)


def test_request_refused_when_champion_moved_and_newer_supersedes(store, tmp_path, fitted):  # noqa: F811
    refs = _pending(store, tmp_path, fitted, 4)
    late = approval.request(refs[2], None, GATE, "/runs/c")  # its gate saw no champion
    assert not late.done and "champion moved: the gate compared against no champion" in (
        late.why_not
    )
    assert registry.get_alias("m", approval.PENDING).version == "2"
    newer = approval.request(refs[3], "1", GATE, "/runs/d")
    assert newer.done and registry.get_alias("m", approval.PENDING).version == "4"
    assert approval.status("m", "2") == ("superseded", approval.status("m", "2")[1])
    with pytest.raises(ApprovalRefused, match="superseded by v4"):
        approval.decide("approve", "m", "2", "alice")


def test_cli_approve_reject_and_approvals_say_what_happened(tmp_path, fitted, capsys):  # noqa: F811
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _pending(uri, tmp_path, fitted)
    prom = tmp_path / "approvals.prom"
    assert cli.main(["approvals", "m", "--tracking-uri", uri, "--prometheus", str(prom)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("m version 2 pending approval for 0.0 h (since ")
    assert "gate compared against v1" in out and "mlfolio approve m 2 --by NAME" in out
    text = prom.read_text()
    assert 'mlfolio_approvals_pending{model="m"} 1.0' in text
    assert 'mlfolio_approval_oldest_pending_timestamp_seconds{compared_against="1"' in text

    with pytest.raises(SystemExit) as usage:  # --by is required
        cli.main(["approve", "m", "2", "--tracking-uri", uri])
    assert usage.value.code == 2 and "required: --by" in capsys.readouterr().err
    argv = ["approve", "m", "2", "--by", "alice", "--note", "ok", "--tracking-uri", uri]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "m version 2 approved by alice: champion now v2 (was v1)\n"
    assert "run folder /runs/b not here (no register.json)" in err
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert err.startswith("mlfolio: m v2 is not pending approval: approved by alice at ")
    assert cli.main(["reject", "m", "3", "--by", "bob", "--tracking-uri", uri]) == 1
    assert "m v3 is not pending approval" in capsys.readouterr().err
    assert cli.main(["approvals", "m", "--tracking-uri", uri, "--prometheus", str(prom)]) == 0
    assert capsys.readouterr().out == "m: no version pending approval\n"
    assert 'mlfolio_approvals_pending{model="m"} 0.0' in prom.read_text()
    assert "oldest_pending" not in prom.read_text()


def test_two_approve_commands_in_separate_processes_one_wins(tmp_path, fitted):  # noqa: F811
    """Two people run `mlfolio approve` at the same moment (two processes, the SQLite
    store's file lock between them): one approves, the other is told who did."""
    import os
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _pending(uri, tmp_path, fitted)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mlfolio.cli", "approve", "m", "2", "--by", who],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for who in ("alice", "bob")
    ]
    outcomes = [(p.wait(120), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in outcomes) == [0, 1], outcomes
    (_, won, _), (_, _, lost) = sorted(outcomes)
    winner = won.split(" approved by ")[1].split(":")[0]
    assert winner in ("alice", "bob")
    assert f"m v2 is not pending approval: approved by {winner} at " in lost
    champion_moves = [e for e in registry.alias_history("m") if e["alias"] == "champion"]
    assert [(e["previous_version"], e["version"], e["by"]) for e in champion_moves][1:] == [
        ("1", "2", winner)
    ]
