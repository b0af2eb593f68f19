"""Command line: ``python -m course_lib <command>`` (also installed as ``course``).

Commands:
  course   execute the lessons with papermill, build build/site and build/results
  bench    lesson 09's training-step benchmarks outside Jupyter (bench --help)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib import runtime


def _course(args: argparse.Namespace) -> int:
    from course_lib.course import run_course

    try:
        return run_course(Path(args.notebooks), Path(args.out), profile=args.profile,
                          lessons=args.lessons, timeout_s=args.cell_timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    course = sub.add_parser("course", help="execute the lessons and build the site")
    course.add_argument("--profile", default="full", choices=runtime.PROFILES,
                        help="smoke: minutes, for tests; full: the teaching run (default)")
    course.add_argument("--lessons", nargs="*", metavar="NN",
                        help="lesson numbers to run (default: all), e.g. --lessons 00 01")
    course.add_argument("--notebooks", default="notebooks", help="folder of the lessons")
    course.add_argument("--out", default="build", help="output folder (default build/)")
    course.add_argument("--cell-timeout", type=int, default=3600, metavar="S",
                        help="seconds one cell may run before the lesson fails (default 3600)")
    course.set_defaults(func=_course)

    from course_lib import bench_cli  # standard library only at import time

    bench_cli.add_arguments(sub.add_parser(
        "bench", help="time the training step in every framework, record the figures",
        description=bench_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
