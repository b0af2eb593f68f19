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


def test_tree_memory_counts_children_and_shared_libraries_once():
    me = os.getpid()
    alone, alone_rss, _ = conftest._tree_memory_mb([me])
    procs = [_start_holder(), _start_holder()]
    try:
        pids = conftest._tree_pids(me)
        assert set(pids) >= {me, *(p.pid for p in procs)}
        charged, rss_sum, anon = conftest._tree_memory_mb(pids)
        one, one_rss, one_anon = conftest._tree_memory_mb([procs[0].pid])
        assert 200 <= one_anon <= one <= one_rss
        assert charged - alone >= 400 and anon >= 400  # both blocks: anonymous memory is summed
        # the two children map the same Python binary and libraries: counted once when charged
        assert rss_sum - charged >= one_rss - one
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert conftest._tree_memory_mb([2**22 + 12345]) == (0.0, 0.0, 0.0)  # no such process


def test_tree_sampler_keeps_the_peak_after_the_child_exits():
    sampler = conftest._TreeSampler(os.getpid(), interval=0.05)
    sampler.start()
    proc = _start_holder()
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    peak, peak_rss_sum, peak_anon = sampler.stop()
    now, _, _ = conftest._tree_memory_mb([os.getpid()])
    assert peak - now >= 190 and peak_rss_sum >= peak and peak_anon >= 190
    assert not sampler.is_alive()


def test_private_memory_counts_anonymous_pages_not_library_pages():
    private0, clean0 = conftest._private_and_clean_mb(os.getpid())
    block = bytearray(100 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    private1, clean1 = conftest._private_and_clean_mb(os.getpid())
    assert private1 - private0 >= 95
    assert clean0 > 5 and abs(clean1 - clean0) < 50  # the interpreter's own mapped files
    del block
    assert conftest._private_and_clean_mb(2**22 + 12345) == (0.0, 0.0)
