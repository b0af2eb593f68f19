"""Point every badge and Colab setup cell at a release tag, in one commit, and tag it.

    python tools/release.py v0.2.0            # what `make release VERSION=v0.2.0` runs
    python tools/release.py v0.2.0 --dry-run  # rewrite the files, commit nothing

Until a release is tagged, the badges and setup cells name the default branch
(``course_lib.colab.RELEASE_REF = "main"``): a ref that exists, so a lesson opened on Colab
runs. A release pins them to a tag, so that a lesson opened from the tag's badges installs
the very ``course_lib`` it was tested with. This command:

1. refuses a version that is not ``vMAJOR.MINOR.PATCH``, a tag that already exists, or a
   working tree with uncommitted changes (the commit must hold the release and nothing else);
2. sets ``RELEASE_REF`` in ``course_lib/colab.py`` and ``version`` in ``pyproject.toml``;
3. rewrites the Colab badge and setup cell of every lesson (``tools/nbclean.py``), writes
   the student edition ``student/`` again from them (``python -m course_tools student``), and
   rewrites the README's Binder badge and its Colab badges (which open the student edition);
4. commits those files ("Release vX.Y.Z: badges and setup cells point at the tag") and
   creates the annotated tag on that commit. Push both: ``git push origin main vX.Y.Z``.

After the release, set ``RELEASE_REF`` back to ``"main"`` in a follow-up commit if the
default branch should again open its own lessons.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")
COLAB_PY = ROOT / "course_lib" / "colab.py"
PYPROJECT = ROOT / "pyproject.toml"
README = ROOT / "README.md"


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=check)


def set_ref(text: str, ref: str) -> str:
    """``course_lib/colab.py``'s text with ``RELEASE_REF = "<ref>"``. Raises ValueError when
    the assignment is not found exactly once."""
    new, count = re.subn(r'^RELEASE_REF = "[^"]*"$', f'RELEASE_REF = "{ref}"', text, flags=re.M)
    if count != 1:
        raise ValueError("course_lib/colab.py must assign RELEASE_REF exactly once")
    return new


def set_version(text: str, version: str) -> str:
    """``pyproject.toml``'s text with ``version = "<version>"`` in ``[project]``."""
    new, count = re.subn(r'^version = "[^"]*"$', f'version = "{version}"', text, count=1,
                         flags=re.M)
    if count != 1:
        raise ValueError("pyproject.toml has no version line")
    return new


#: A Colab link of the README (to a lesson of either edition); group 1 is the part before
#: the ref, group 2 the folder and file after it.
README_COLAB = re.compile(r"(https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/)"
                          r"[^/\s)]+(/(?:student|notebooks)/\d\d_\w+\.ipynb)")


def set_readme_refs(text: str, ref: str, binder_badge: str) -> str:
    """The README's text with every Colab link at ``ref`` and the Binder badge replaced by
    ``binder_badge``. Raises nothing."""
    text = re.sub(r"\[!\[Launch Binder\]\([^)]*\)\]\([^)]*\)", lambda _: binder_badge, text)
    quoted = urllib.parse.quote(ref)
    return README_COLAB.sub(lambda m: f"{m.group(1)}{quoted}{m.group(2)}", text)


def rewrite_badges(ref: str) -> list[Path]:
    """Rewrite every lesson's badge and setup cell, the student edition and the README's
    Binder and Colab badges for ``ref``; return the files written (or removed)."""
    sys.path.insert(0, str(ROOT))
    import nbformat

    from course_lib import colab
    from course_tools import nbclean, student

    written = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        nbclean.apply_colab_cells(nb, path.name, ref=ref)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            written.append(path)
    written += student.write(ROOT / "notebooks", ROOT / student.STUDENT_DIR, ref=ref)
    text = README.read_text(encoding="utf-8")
    new = set_readme_refs(text, ref, colab.binder_badge_markdown(ref=ref))
    if new != text:
        README.write_text(new, encoding="utf-8")
        written.append(README)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="the tag, vMAJOR.MINOR.PATCH")
    parser.add_argument("--dry-run", action="store_true", help="rewrite files, commit nothing")
    args = parser.parse_args(argv)
    if not VERSION.fullmatch(args.version):
        raise SystemExit(f"release: {args.version!r} is not a version tag like v0.2.0")
    if _git("rev-parse", "-q", "--verify", f"refs/tags/{args.version}", check=False).returncode == 0:
        raise SystemExit(f"release: tag {args.version} already exists; choose the next version")
    if not args.dry_run and _git("status", "--porcelain").stdout.strip():
        raise SystemExit("release: the working tree has uncommitted changes; commit or stash "
                         "them first (the release commit holds only the rewritten badges)")
    COLAB_PY.write_text(set_ref(COLAB_PY.read_text(encoding="utf-8"), args.version),
                        encoding="utf-8")
    PYPROJECT.write_text(set_version(PYPROJECT.read_text(encoding="utf-8"), args.version[1:]),
                         encoding="utf-8")
    written = [COLAB_PY, PYPROJECT, *rewrite_badges(args.version)]
    print(f"release: {len(written)} files point at {args.version}")
    if args.dry_run:
        return 0
    _git("add", "-A", "--", *[str(p.relative_to(ROOT)) for p in written])
    _git("commit", "-q", "-m", f"Release {args.version}: badges and setup cells point at the tag")
    _git("tag", "-a", args.version, "-m", f"Release {args.version}")
    print(f"release: committed and tagged {args.version}; push with "
          f"`git push origin HEAD {args.version}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
