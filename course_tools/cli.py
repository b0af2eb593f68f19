"""Command line: ``python -m course_tools <command>`` (also installed as ``course``).

Commands:
  course   execute the lessons with papermill, build build/site and build/results
           (one line per lesson; each kernel's full log in build/logs/<run>/)
  assign   write each student's release of the lessons (docs/instructors.md)
  grade    grade the returned notebooks: grades.csv, feedback per student
  student  write the student edition student/ from notebooks/ (--check: report drift)
  plan     write each lesson's Plan block and summary cell from data/lessons.toml and the
           measured times (--check: report drift; --update-times DIR: add a run's times)
  bench    lesson 09's training-step benchmarks outside Jupyter (bench --help)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib import runtime


def _course(args: argparse.Namespace) -> int:
    from course_tools.runner import run_course

    try:
        return run_course(Path(args.notebooks), Path(args.out), profile=args.profile,
                          lessons=args.lessons, timeout_s=args.cell_timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _assign(args: argparse.Namespace) -> int:
    from course_tools.grading.release import GradingError, assign

    try:
        written = assign(args.roster, args.out, notebooks_dir=args.notebooks,
                         lessons=args.lessons)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    students = {p.parent.name for p in written}
    print(f"wrote {len(written)} notebooks for {len(students)} students in {args.out}/ "
          "(hand out one folder per student; keep assignment.json)")
    return 0


def _grade(args: argparse.Namespace) -> int:
    import os
    import signal

    from course_tools.grading.autograde import Options, grade
    from course_tools.grading.release import GradingError

    options = Options(cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout,
                      lesson_cell_timeout=args.lesson_cell_timeout,
                      jobs=args.jobs, keep_temp=args.keep_temp,
                      profile=args.profile or os.environ.get("COURSE_PROFILE", "full"),
                      isolation=args.isolation, assignment=args.assignment)

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)  # so that the workers are stopped
    try:
        grades = grade(args.submissions, args.roster, args.out, notebooks_dir=args.notebooks,
                       lessons=args.lessons, options=options,
                       progress=lambda line: print(line, flush=True))
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the running notebooks were stopped; no grades.csv written",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    problems = sum(1 for g in grades if g.status != "ok")
    print(f"graded {len(grades)} students ({problems} with problems): {args.out}/grades.csv, "
          f"{args.out}/feedback/")
    return 0


def _student(args: argparse.Namespace) -> int:
    from course_tools import student
    from course_tools.grading.release import GradingError

    try:
        if args.check:
            problems = student.drift(args.notebooks, args.out)
            if problems:
                print("the student edition is out of date (run: python -m course_tools "
                      "student):", *problems, sep="\n  ", file=sys.stderr)
                return 1
            print(f"{args.out}/ matches {args.notebooks}/")
            return 0
        changed = student.write(args.notebooks, args.out, lessons=args.lessons)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"student edition in {args.out}/: {len(changed)} file(s) written or removed")
    return 0



def _lesson_selection(parser: argparse.ArgumentParser, check_help: str) -> None:
    """The options the commands that rewrite lessons share: --notebooks, --lessons, --check."""
    parser.add_argument("--notebooks", default="notebooks", help="folder of the lessons")
    parser.add_argument("--lessons", nargs="*", metavar="NN",
                        help="lesson numbers (default: all), e.g. --lessons 00 01")
    parser.add_argument("--check", action="store_true", help=check_help)

def _plan(args: argparse.Namespace) -> int:
    from course_tools import plan

    try:
        if args.update_times:
            changed = plan.update_times(args.update_times)
            print(f"{plan.TIMES_FILE.name}: {len(changed)} time(s) added or updated from "
                  f"{args.update_times}")
        if args.check:
            problems = plan.drift(args.notebooks)
            if problems:
                print("the lessons' plan blocks are out of date (run: python -m course_tools "
                      "plan, then python -m course_tools student):", *problems, sep="\n  ",
                      file=sys.stderr)
                return 1
            print(f"the plan blocks of {args.notebooks}/ match data/lessons.toml")
            return 0
        changed_files = plan.write(args.notebooks, lessons=args.lessons)
    except plan.PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"plan blocks: {len(changed_files)} lesson(s) rewritten"
          + (" (now run: python -m course_tools student)" if changed_files else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_tools", description=__doc__,
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

    assign = sub.add_parser("assign", help="write each student's release of the lessons")
    assign.add_argument("--roster", required=True, metavar="ROSTER.csv",
                        help="CSV with columns id, name and optional parameter columns "
                             "(seed, TRAIN_FRACTION, ...)")
    assign.add_argument("--out", required=True, metavar="DIR",
                        help="new folder for DIR/<id>/<lesson>.ipynb")
    assign.add_argument("--lessons", nargs="*", metavar="NN",
                        help="lesson numbers (default: all), e.g. --lessons 00 01")
    assign.add_argument("--notebooks", default="notebooks", help="folder of the lessons")
    assign.set_defaults(func=_assign)

    grade = sub.add_parser("grade", help="grade returned notebooks")
    grade.add_argument("submissions", metavar="SUBMISSIONS_DIR",
                       help="folder with SUBMISSIONS_DIR/<id>/<lesson>.ipynb")
    grade.add_argument("--roster", required=True, metavar="ROSTER.csv",
                       help="the roster used by assign (parameters come from it)")
    grade.add_argument("--out", required=True, metavar="DIR",
                       help="folder for grades.csv, feedback/ and graded/")
    grade.add_argument("--lessons", nargs="*", metavar="NN",
                       help="lesson numbers (default: all), e.g. --lessons 00 01")
    grade.add_argument("--notebooks", default="notebooks", help="folder of the lessons")
    grade.add_argument("--jobs", type=int, default=2, metavar="N",
                       help="notebooks graded at the same time (default 2)")
    grade.add_argument("--cell-timeout", type=int, default=300, metavar="S",
                       help="seconds an answer or tests cell may run before it is "
                            "interrupted (default 300)")
    grade.add_argument("--lesson-cell-timeout", type=int, default=3600, metavar="S",
                       help="the same for the lesson's other cells (default 3600; never "
                            "less than --cell-timeout)")
    grade.add_argument("--notebook-timeout", type=int, default=3600, metavar="S",
                       help="seconds one notebook may run, kernel start included, before "
                            "it is killed (default 3600)")
    grade.add_argument("--profile", choices=runtime.PROFILES,
                       help="COURSE_PROFILE for the notebooks (default: $COURSE_PROFILE, "
                            "else full)")
    grade.add_argument("--isolation", choices=("bubblewrap", "none"),
                       help="the students' kernels' sandbox (default: $GRADER_ISOLATION, else "
                            "bubblewrap, which must be installed); none: no sandbox, for "
                            "trusted submissions only (docs/instructors.md)")
    grade.add_argument("--assignment", metavar="assignment.json",
                       help="the assignment.json assign wrote (the parameters each student "
                            "was given): a roster edited since assign is then reported to you, "
                            "not blamed on the student")
    grade.add_argument("--keep-temp", action="store_true",
                       help="keep the per-notebook working folders (for debugging)")
    grade.set_defaults(func=_grade)

    student = sub.add_parser("student", help="write the student edition (student/)")
    student.add_argument("--out", default="student", help="output folder (default student/)")
    _lesson_selection(student, "write nothing; exit 1 when the folder differs from a fresh "
                               "edition")
    student.set_defaults(func=_student)

    plan = sub.add_parser("plan", help="write the lessons' Plan blocks and summary cells")
    _lesson_selection(plan, "write no notebook; exit 1 when a lesson's blocks differ from the "
                            "data")
    plan.add_argument("--update-times", metavar="DIR",
                      help="first add the lesson times of a run to data/lesson-times.json: "
                           "a course results folder (build/results) or a Colab lane folder "
                           "(build/colab)")
    plan.set_defaults(func=_plan)

    from course_tools import bench_cli  # standard library only at import time

    bench_cli.add_arguments(sub.add_parser(
        "bench", help="time the training step in every framework, record the figures",
        description=bench_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
