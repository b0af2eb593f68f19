"""course_lib.workers: time limits, clear errors, no process left behind, results read back."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from course_lib import workers


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _pids(folder):
    return [int(p.read_text()) for p in folder.glob("*.pid")]


# A stand-in for a collective: rank 0 waits for rank 1 to connect to it; each rank runs in its
# own process session (as torchrun starts them), so killing the launcher's group alone would
# leave them running.
# Like torchrun, the launcher ends the other ranks when one fails.
LAUNCHER = """
    import subprocess, sys, time
    ranks = [subprocess.Popen([sys.executable, sys.argv[1], str(r), sys.argv[2]],
                              start_new_session=True) for r in range(2)]
    while any(p.poll() is None for p in ranks):
        if any(p.poll() not in (None, 0) for p in ranks):
            for p in ranks:
                p.kill()
            sys.exit(1)
        time.sleep(0.05)
    sys.exit(max(p.returncode for p in ranks))
"""
RANK = """
    import os, socket, sys, time
    from pathlib import Path
    from course_lib import workers
    rank, mode = int(sys.argv[1]), sys.argv[2]
    os.environ["RANK"] = str(rank)
    folder = Path(os.environ["COURSE_WORKER_DIR"])
    (folder / f"rank{rank}.pid").write_text(str(os.getpid()))
    port_file = folder / "port"
    if rank == 0:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port_file.write_text(str(server.getsockname()[1]))
        workers.report("waiting for rank 1")
        conn, _ = server.accept()
        conn.recv(1)
    else:
        if mode == "never_join":
            workers.report("sleeping instead of joining")
            time.sleep(3600)
        if mode == "crash":
            raise ValueError("rank 1 failed on purpose")
        while not port_file.exists():
            time.sleep(0.05)
        socket.create_connection(("127.0.0.1", int(port_file.read_text()))).send(b"x")
    workers.write_result({"rank": rank, "pid": os.getpid()})
"""


def test_a_script_that_sleeps_forever_times_out_and_is_killed(tmp_path):
    script = _script(tmp_path, "sleeper.py", """
        import os, time
        from pathlib import Path
        from course_lib import workers
        Path(os.environ["COURSE_WORKER_DIR"], "w.pid").write_text(str(os.getpid()))
        print("about to wait for a collective", flush=True)
        workers.report("all_reduce")
        time.sleep(3600)
    """)
    start = time.monotonic()
    with pytest.raises(workers.WorkerTimeout) as info:
        workers.run(workers.python_command(script), timeout=3, name="sleeper",
                    expect=["sleeper"], run_dir=tmp_path / "run", grace=1)
    elapsed = time.monotonic() - start
    assert elapsed < 3 + 1 + 3  # the limit, the grace period, a little slack
    err = info.value
    first = str(err).splitlines()[0]
    assert "sleeper" in first and "3 s" in first and "Stalled: sleeper" in first
    assert "last report 'all_reduce'" in str(err)
    assert "about to wait for a collective" in err.tail  # the tail of its output is shown
    assert err.culprits == ["sleeper"] and err.returncode is None
    assert 3 <= err.seconds < 7
    assert _alive(_pids(tmp_path / "run")) == []


def test_two_ranks_one_never_joins(tmp_path):
    launcher = _script(tmp_path, "launcher.py", LAUNCHER)
    rank = _script(tmp_path, "rank.py", RANK)
    with pytest.raises(workers.WorkerTimeout) as info:
        workers.run(workers.python_command(launcher, rank, "never_join"), timeout=4,
                    name="two ranks", expect=["rank0", "rank1"], run_dir=tmp_path / "run",
                    grace=1)
    err = info.value
    assert err.seconds < 4 + 1 + 3
    assert err.workers["rank1"].startswith("last report 'sleeping instead of joining' at")
    assert err.workers["rank0"].startswith("last report 'waiting for rank 1' at")
    assert "rank1" in str(err).splitlines()[0]
    pids = _pids(tmp_path / "run")
    assert len(pids) == 2  # both ranks started, each in its own session...
    assert _alive(pids) == []  # ...and neither is left behind


def test_two_ranks_both_join(tmp_path):
    launcher = _script(tmp_path, "launcher.py", LAUNCHER)
    rank = _script(tmp_path, "rank.py", RANK)
    done = workers.run(workers.python_command(launcher, rank, "join"), timeout=30,
                       expect=["rank0", "rank1"], run_dir=tmp_path / "run")
    assert done.returncode == 0 and sorted(done.results) == ["rank0", "rank1"]
    assert done.results["rank1"]["rank"] == 1
    assert done.run_dir == tmp_path / "run" and done.seconds > 0


def test_a_crashed_worker_is_named_with_its_error(tmp_path):
    launcher = _script(tmp_path, "launcher.py", LAUNCHER)
    rank = _script(tmp_path, "rank.py", RANK)
    start = time.monotonic()
    with pytest.raises(workers.WorkerCrashed) as info:
        workers.run(workers.python_command(launcher, rank, "crash"), timeout=20,
                    expect=["rank0", "rank1"], run_dir=tmp_path / "run", grace=1)
    assert time.monotonic() - start < 20
    err = info.value
    assert str(err).splitlines()[0].startswith("launcher.py exited with status 1")
    assert "Error: ValueError: rank 1 failed on purpose" in str(err)
    assert set(err.culprits) == {"rank0", "rank1"}  # neither wrote a result
    assert _alive(_pids(tmp_path / "run")) == []


def test_a_crash_is_reported_fast(tmp_path):
    script = _script(tmp_path, "crash.py", """
        print("step 0 fine")
        raise ZeroDivisionError("the loss blew up")
    """)
    start = time.monotonic()
    with pytest.raises(workers.WorkerCrashed) as info:
        workers.run(workers.python_command(script), timeout=30, name="crasher")
    assert time.monotonic() - start < 10
    err = info.value
    first = str(err).splitlines()[0]
    assert first.startswith("crasher exited with status 1 after")
    assert "Error: ZeroDivisionError: the loss blew up" in str(err)
    assert "step 0 fine" in err.tail and err.returncode == 1


def test_clean_exit_without_an_expected_result_is_an_error(tmp_path):
    script = _script(tmp_path, "quiet.py", "print('done, but wrote nothing')\n")
    with pytest.raises(workers.WorkerCrashed, match="without every result") as info:
        workers.run(workers.python_command(script), timeout=30, expect=["rank0"])
    assert info.value.culprits == ["rank0"] and info.value.workers == {"rank0": "no report"}


def test_results_environment_and_output(tmp_path):
    script = _script(tmp_path, "ok.py", """
        import os, sys
        from course_lib import workers
        print("hello from", workers.worker_name())  # the script's name: ok
        workers.report("start")
        workers.write_result({"name": workers.worker_name(), "extra": os.environ["EXTRA"],
                              "args": sys.argv[1:], "losses": [0.5, 0.25]})
    """)
    done = workers.run(workers.python_command(script, "a", 2), timeout=30, name="job",
                       env={"EXTRA": 7}, expect=["ok"], run_dir=tmp_path / "r")
    assert done.name == "job"
    assert done.results == {"ok": {"name": "ok", "extra": "7", "args": ["a", "2"],
                                   "losses": [0.5, 0.25]}}
    assert "hello from ok" in done.output and "hello from ok" in done.tail(3)
    assert workers.read_results(tmp_path / "r") == done.results
    assert (tmp_path / "r" / workers.LOG_NAME).is_file()


def test_echo_prints_the_output(tmp_path, capsys):
    script = _script(tmp_path, "talk.py", "print('live line')\n")
    workers.run(workers.python_command(script), timeout=30, echo=True)
    assert "live line" in capsys.readouterr().out


def test_old_results_in_a_reused_folder_do_not_count(tmp_path):
    folder = tmp_path / "r"
    workers.write_result({"stale": True}, name="rank0", result_dir=folder)
    script = _script(tmp_path, "quiet.py", "pass\n")
    with pytest.raises(workers.WorkerCrashed):
        workers.run(workers.python_command(script), timeout=30, expect=["rank0"], run_dir=folder)


def test_worker_side_helpers(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv(workers.NAME_VAR, raising=False)
    monkeypatch.setattr(sys, "argv", ["/some/where/train_step.py"])
    assert workers.worker_name() == "train_step"
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert workers.worker_name() == "worker"
    monkeypatch.setenv(workers.NAME_VAR, "mine")
    assert workers.worker_name() == "mine"
    monkeypatch.setenv("RANK", "3")
    assert workers.worker_name() == "rank3" and workers.worker_name("x") == "x"
    path = workers.write_result({"a": 1}, result_dir=tmp_path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert workers.read_results(tmp_path) == {"rank3": {"a": 1}}
    with pytest.raises(TypeError):
        workers.write_result({"a": object()}, result_dir=tmp_path)
    monkeypatch.delenv(workers.DIR_VAR, raising=False)
    with pytest.raises(RuntimeError, match="COURSE_WORKER_DIR"):
        workers.report("x")
    (tmp_path / "bad.result.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.result.json"):
        workers.read_results(tmp_path)


def test_commands_and_arguments(tmp_path):
    cmd = workers.torchrun_command("train.py", "--steps", 3, nproc_per_node=2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=2" in cmd
    assert cmd[-3:] == ["train.py", "--steps", "3"]
    multi = workers.torchrun_command("t.py", nproc_per_node=4, nnodes=2, standalone=False,
                                     options=["--node_rank=0"])
    assert "--nnodes=2" in multi and "--standalone" not in multi and "--node_rank=0" in multi
    with pytest.raises(ValueError):
        workers.torchrun_command("t.py", nproc_per_node=2, nnodes=2)
    with pytest.raises(ValueError):
        workers.torchrun_command("t.py", nproc_per_node=0)
    for bad in (0, -1, True, "5"):
        with pytest.raises(ValueError, match="timeout"):
            workers.run(["true"], timeout=bad)
    with pytest.raises(ValueError, match="empty"):
        workers.run([], timeout=1)
    assert workers.python_command("s.py", 1) == [sys.executable, "s.py", "1"]


def test_scratch_dir(tmp_path):
    root = tmp_path / "course"
    (root / "course_lib").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    assert workers.scratch_dir("11", root=root) == root / "build" / "lesson11"
    assert (root / "build" / "lesson11").is_dir()
    here = workers.scratch_dir("11")  # this repository: build/ is ignored by git
    assert here.parts[-2:] == ("build", "lesson11")


def test_scratch_dir_without_a_course_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = workers.scratch_dir("11")  # a new private folder, never a shared fixed name
    assert folder.parent == Path(tempfile.gettempdir()) and folder.is_dir()
    assert folder.name.startswith("course-lesson11-") and folder != workers.scratch_dir("11")


# The real engine: torchrun with gloo, two ranks (a few seconds of torch imports each).
TORCH_RANK = """
    import os, sys, time
    from pathlib import Path
    from course_lib import workers
    rank = int(os.environ["RANK"])
    Path(os.environ["COURSE_WORKER_DIR"], f"rank{rank}.pid").write_text(str(os.getpid()))
    if sys.argv[1] == "never_join" and rank == 1:
        workers.report("sleeping instead of joining")
        time.sleep(3600)
    if sys.argv[1] == "crash" and rank == 1:
        # wait (bounded) until rank 0 has written its pid, so that the test can check that
        # the launcher ended it: on a loaded machine rank 0 may start seconds later
        rank0 = Path(os.environ["COURSE_WORKER_DIR"], "rank0.pid")
        for _ in range(600):
            if rank0.exists() and rank0.read_text().strip():
                break
            time.sleep(0.05)
        raise RuntimeError("rank 1 crashed on purpose")
    workers.report("importing torch")
    import torch
    import torch.distributed as dist
    workers.report("init_process_group")
    dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    workers.write_result({"total": total.item()})
    dist.destroy_process_group()
"""


@pytest.mark.parametrize("mode", ["never_join", "crash"])
def test_torchrun_rank_never_joins_or_crashes(tmp_path, mode):
    pytest.importorskip("torch.distributed")
    script = _script(tmp_path, "ddp_job.py", TORCH_RANK)
    cmd = workers.torchrun_command(script, mode, nproc_per_node=2)
    start = time.monotonic()
    kind = workers.WorkerTimeout if mode == "never_join" else workers.WorkerCrashed
    limit = 10 if mode == "never_join" else 60  # a crash ends by itself: a generous limit
    with pytest.raises(kind) as info:
        workers.run(cmd, timeout=limit, expect=["rank0", "rank1"], run_dir=tmp_path / "run",
                    grace=3)
    assert time.monotonic() - start < limit + 3 + 5
    err = info.value
    if mode == "never_join":
        assert "Stalled: rank0, rank1" in str(err).splitlines()[0]
        assert err.workers["rank1"].startswith("last report 'sleeping instead of joining'")
        assert err.workers["rank0"].startswith("last report")  # importing torch, or waiting
    else:
        assert err.culprits == ["rank1"]  # from torchrun's "Root Cause" summary
        assert "Error: RuntimeError: rank 1 crashed on purpose" in str(err)
        assert "rank 1 crashed on purpose" in err.tail
    pids = _pids(tmp_path / "run")
    assert len(pids) == 2 and _alive(pids) == []


@pytest.mark.slow
def test_stop_process_tree_reaches_descendants_and_token_holders(tmp_path):
    """A child that ignores SIGTERM, a grandchild, and a process in a session of its own that
    only shares the token: all three are gone when stop_process_tree returns."""
    import psutil

    token = "t" + uuid.uuid4().hex
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sleeper = "import time; time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", sleeper])
        # an orphan in a session of its own: its parent exits at once
        spawn = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', "
                 + repr(sleeper) + "], start_new_session=True, "
                 "stdout=subprocess.DEVNULL).pid)")
        loner = int(subprocess.check_output([sys.executable, "-c", spawn]))
        open({str(pids)!r}, "w").write(f"{{child.pid}} {{loner}}")
        time.sleep(600)
    """)
    env = {**os.environ, workers.TOKEN_VAR: token}
    root = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child, loner = map(int, pids.read_text().split())
    assert psutil.Process(loner).ppid() != root.pid  # re-parented: only the token finds it
    signalled = workers.stop_process_tree(root.pid, grace=0.5, token=token)
    assert {root.pid, child, loner} <= set(signalled)
    root.wait(timeout=5)
    for pid in (child, loner):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert workers.stop_process_tree(root.pid, grace=0) == []  # nothing left: not an error
