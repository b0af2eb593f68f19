"""binder/ (repo2docker) runs the lock's versions: generated file, pinned Python, dry-run install."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("binder_requirements",
                                              ROOT / "tools" / "binder_requirements.py")
binder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(binder)


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines):
    return {_norm(n): v for n, v in (p.split("==", 1) for p in lines if "==" in p)}


def test_binder_requirements_are_generated_from_the_lock():
    assert binder.main(["--check"]) == 0, "run: python tools/binder_requirements.py"
    lock = _pins(binder.lock_pins(binder.LOCK.read_text(encoding="utf-8")))
    text = binder.BINDER.read_text(encoding="utf-8")
    ours = _pins(line for line in text.splitlines() if not line.startswith(("#", "-")))
    assert ours.pop("torch") == lock.pop("torch") + "+cpu"
    assert ours == lock
    assert f"--extra-index-url {binder.TORCH_CPU_INDEX}" in text


def test_generator_refuses_a_lock_without_exact_pins():
    with pytest.raises(ValueError, match="exact pins"):
        binder.binder_requirements("numpy>=2\ntorch==2.13.0\n")
    with pytest.raises(ValueError, match="no torch"):
        binder.binder_requirements("numpy==2.1.0\n")


def test_binder_pins_python_and_installs_course_lib():
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"
    post = ROOT / "binder" / "postBuild"
    assert os.access(post, os.X_OK) and "pip install --no-deps" in post.read_text()


@pytest.mark.slow
@pytest.mark.network
def test_binder_requirements_resolve_to_exactly_the_lock(tmp_path):
    """A dry-run install (PyPI) of binder/requirements.txt resolves to the lock's versions and
    nothing else. PyTorch's CPU index is not reachable from the course machines, so torch is
    checked against the lock's own pin (and its +cpu build by the text test above)."""
    text = binder.BINDER.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith(("#", "-"))]
    lines = [re.sub(r"\+cpu$", "", line) for line in lines]
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.json"
    links = ["--find-links", "/opt/wheels"] if Path("/opt/wheels").is_dir() else []
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                           "--ignore-installed", *links, "-r", str(reqs), "--report",
                           str(report)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = {_norm(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    resolved.pop("setuptools", None), resolved.pop("wheel", None), resolved.pop("pip", None)
    resolved["torch"] = resolved["torch"].split("+")[0]
    assert resolved == _pins(lines)


def test_readme_has_the_binder_badge_of_the_release():
    from course_lib import colab

    assert colab.binder_badge_markdown() in (ROOT / "README.md").read_text(encoding="utf-8")
