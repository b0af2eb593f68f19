"""Write binder/requirements.txt from requirements.lock, so Binder runs the lock's versions.

Binder (repo2docker) reads only binder/ when it exists. Its file carries every pin of the lock
unchanged except torch, which comes from PyTorch's CPU index (``torch==X+cpu``): the torch
wheel on PyPI for Linux is the CUDA build, several GB, useless in Binder's CPU container.

    python tools/binder_requirements.py            # rewrite binder/requirements.txt
    python tools/binder_requirements.py --check    # exit 1 if it drifted from the lock
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
BINDER = ROOT / "binder" / "requirements.txt"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def lock_pins(text: str) -> list[str]:
    """The ``name==version`` lines of a lock file, in order (comments and blanks dropped)."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def binder_requirements(lock_text: str) -> str:
    """binder/requirements.txt for a lock: its pins, torch as the ``+cpu`` build.

    Raises ValueError if the lock has no ``torch==`` pin or a line that is not ``name==version``.
    """
    pins = lock_pins(lock_text)
    bad = [p for p in pins if "==" not in p]
    if bad:
        raise ValueError(f"requirements.lock has lines that are not exact pins: {bad[:3]}")
    if not any(p.startswith("torch==") for p in pins):
        raise ValueError("requirements.lock pins no torch")
    lines = [p + "+cpu" if p.startswith("torch==") and "+" not in p else p for p in pins]
    return ("# Generated from requirements.lock by tools/binder_requirements.py: do not edit.\n"
            "# Binder gets the lock's versions; torch is the CPU build from PyTorch's index.\n"
            f"--extra-index-url {TORCH_CPU_INDEX}\n" + "\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    wanted = binder_requirements(LOCK.read_text(encoding="utf-8"))
    if args.check:
        if not BINDER.is_file() or BINDER.read_text(encoding="utf-8") != wanted:
            print(f"{BINDER} drifted from {LOCK}: run python tools/binder_requirements.py")
            return 1
        return 0
    tmp = BINDER.with_suffix(".tmp")
    tmp.write_text(wanted, encoding="utf-8")
    tmp.replace(BINDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
