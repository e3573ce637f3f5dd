"""mlfolio.procstat: what a process used, from /proc."""

from __future__ import annotations

import os

import pytest

from mlfolio.procstat import peak_rss_mb, tree_cpu_s


def test_peak_rss_is_the_processs_high_water_mark():
    import resource

    mine = peak_rss_mb(os.getpid())
    assert mine == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0.05)
    assert peak_rss_mb(None) is None
    assert peak_rss_mb(2**22 + 12345) is None  # above pid_max: no such process


def test_tree_cpu_time_counts_a_fork_servers_finished_worker(tmp_path):
    """Tuning workers run in a multiprocessing fork server's children: a worker that ended
    was reaped by the server (alive under the kernel), so its CPU time still counts."""
    import subprocess
    import sys

    script = tmp_path / "fork_server_worker.py"
    script.write_text(
        "import multiprocessing as mp, sys, time\n"
        "def burn():\n"
        "    t = time.process_time()\n"
        "    while time.process_time() - t < 1.0: pass\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('forkserver').Process(target=burn); p.start(); p.join()\n"
        "    print('done', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "done\n"
        assert tree_cpu_s(proc.pid) >= 1.0
    finally:
        proc.communicate("")


def test_tree_cpu_time_of_no_process_is_unknown():
    assert tree_cpu_s(None) is None and tree_cpu_s(2**22 + 12345) is None
