"""The Colab lane's own pieces (tools/colab_lane.py) and the release command (tools/release.py).

The lane itself runs in `make test-colab`; these tests check what it relies on, fast."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import colab_lane  # noqa: E402
import release  # noqa: E402

from course_lib import colab  # noqa: E402


def test_versions_file_pins_every_framework_of_colab():
    pins = colab_lane.read_versions()
    for name in ("tensorflow", "keras", "torch", "jax", "jaxlib", "flax", "numpy",
                 "scikit-learn"):
        assert name in pins, f"colab/versions.txt does not pin {name}"
    assert pins["jax"] == pins["jaxlib"]
    text = (ROOT / "colab" / "versions.txt").read_text(encoding="utf-8")
    assert "Source:" in text and "2026" in text  # the list says where and when it is from


def test_read_versions_refuses_a_range(tmp_path):
    bad = tmp_path / "versions.txt"
    bad.write_text("# ok\ntorch>=2.11\n", encoding="utf-8")
    with pytest.raises(ValueError, match="name==version"):
        colab_lane.read_versions(bad)


def test_held_versions_reads_only_the_frameworks_of_a_freeze():
    freeze = ("Flax==0.11.2\njax==0.7.2\nrequests==2.32.3\nml_dtypes==0.5.3\n"
              "course_lib @ git+https://github.com/x/y@abc\n")
    held = colab_lane.held_versions(freeze)
    assert held == {"flax": "Flax==0.11.2", "jax": "jax==0.7.2", "ml-dtypes": "ml_dtypes==0.5.3"}
    assert set(held) <= colab.HELD


def test_find_python313_explains_what_to_do(tmp_path):
    fake = tmp_path / "python3.13"
    fake.write_text("#!/bin/sh\necho '(3, 11)'\n", encoding="utf-8")
    fake.chmod(0o755)
    with pytest.raises(SystemExit, match="PYTHON313=.*is not a Python 3.13"):
        colab_lane.find_python313(str(fake))


def test_snapshot_holds_the_working_tree_under_the_badge_ref(tmp_path):
    """What pip installs in the lane is this checkout's working tree (untracked files
    included), under RELEASE_REF, while the checkout's own index is untouched."""
    marker = ROOT / "colab" / f"lane-test-{tmp_path.name}.txt"
    has_repo = (ROOT / ".git").exists()
    status = ["git", "-C", str(ROOT), "status", "--porcelain"]
    status_before = subprocess.run(status, capture_output=True, text=True).stdout if has_repo else ""
    marker.write_text("untracked\n", encoding="utf-8")
    try:
        remote, commit = colab_lane.snapshot_repository(tmp_path)
        files = subprocess.run(["git", "-C", str(remote), "ls-tree", "-r", "--name-only",
                                colab.RELEASE_REF], capture_output=True, text=True,
                               check=True).stdout.split()
        assert f"colab/{marker.name}" in files and "course_lib/colab.py" in files
        assert not any(f.startswith((".venv/", "build/")) for f in files)
        resolved = subprocess.run(["git", "-C", str(remote), "rev-parse", colab.RELEASE_REF],
                                  capture_output=True, text=True, check=True).stdout.strip()
        assert resolved.startswith(commit)
    finally:
        marker.unlink()
    if has_repo:  # the checkout's own repository is untouched
        assert subprocess.run(status, capture_output=True, text=True).stdout == status_before


def test_release_sets_the_ref_and_version():
    text = 'GITHUB_REPO = "a/b"\nRELEASE_REF = "main"\n'
    assert release.set_ref(text, "v0.2.0") == 'GITHUB_REPO = "a/b"\nRELEASE_REF = "v0.2.0"\n'
    with pytest.raises(ValueError, match="exactly once"):
        release.set_ref(text + 'RELEASE_REF = "x"\n', "v0.2.0")
    assert 'version = "0.2.0"' in release.set_version('[project]\nversion = "0.1.0"\n', "0.2.0")


def test_release_refuses_a_version_that_is_not_a_tag():
    with pytest.raises(SystemExit, match="not a version tag"):
        release.main(["0.2"])
