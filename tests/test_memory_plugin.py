"""The memory figures the test run records for every lesson (tests/conftest.py)."""

import os
import subprocess
import sys
import time

import conftest

HOLD = """
import sys, time
block = bytearray(200 * 2**20)  # 200 MB, written so that it is resident
for i in range(0, len(block), 4096):
    block[i] = 1
print("ready", flush=True)
time.sleep(30)
"""


def _start_holder():
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_tree_memory_counts_the_children_of_a_process():
    alone_rss, alone_pss = conftest._tree_memory_mb(os.getpid())
    proc = _start_holder()
    try:
        rss, pss = conftest._tree_memory_mb(os.getpid())
        assert rss - alone_rss >= 190 and pss - alone_pss >= 190
        assert pss <= rss
        child_rss, _ = conftest._tree_memory_mb(proc.pid)
        assert 190 <= child_rss < rss
    finally:
        proc.kill()
        proc.wait()
    assert conftest._tree_memory_mb(2**22 + 12345) == (0.0, 0.0)  # no such process


def test_tree_sampler_keeps_the_peak_after_the_child_exits():
    sampler = conftest._TreeSampler(os.getpid(), interval=0.05)
    sampler.start()
    proc = _start_holder()
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    peak_rss, peak_pss = sampler.stop()
    now_rss, _ = conftest._tree_memory_mb(os.getpid())
    assert peak_rss - now_rss >= 190 and peak_pss >= 190
    assert not sampler.is_alive()
