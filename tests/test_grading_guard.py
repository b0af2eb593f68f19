"""The write guard (course_tools/grading/guard.py) in a process of its own, as a graded
kernel has it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

GUARD = Path(__file__).resolve().parent.parent / "course_tools" / "grading" / "guard.py"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_a_process_may_reset_its_own_memory_peak_and_nothing_else_under_proc(tmp_path):
    # lesson 09 writes "5" to /proc/self/clear_refs (its memory measurement): that is not
    # tampering; another process's clear_refs and any other /proc file stay refused
    code = (
        "import os, runpy\n"
        f"runpy.run_path({str(GUARD)!r}, run_name='sitecustomize')\n"
        "with open('/proc/self/clear_refs', 'w') as handle:\n"
        "    handle.write('5')\n"
        "print('own: written')\n"
        "for path in ('/proc/1/clear_refs', '/proc/self/oom_score_adj'):\n"
        "    try:\n"
        "        open(path, 'w').close()\n"
        "        print(path, 'written')\n"
        "    except PermissionError as error:\n"
        "        print(path, 'refused' if 'graded code may not write' in str(error) else error)\n"
    )
    log = tmp_path / "guard.log"
    env = {**os.environ, "GRADER_SANDBOX": str(tmp_path), "GRADER_LOG": str(log)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == ["own: written", "/proc/1/clear_refs refused",
                   "/proc/self/oom_score_adj refused"]
    refused = log.read_text().splitlines()
    assert len(refused) == 2 and all(line.startswith("write\t/proc/") for line in refused)
