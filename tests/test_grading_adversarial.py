"""Issue 16: a class of dishonest and clumsy students against ``grade``, in the sandbox.

One grading run (a lesson written here, NumPy only, so each kernel starts in seconds) grades
one submission per trick of the issue, every trick with *wrong* answers, plus the honest edge
cases; the tests below are assertions on that one run. Needs bubblewrap (``make test``
installs it). Every question of the lesson is decided by the trusted check (a second kernel
that never runs student code, :mod:`course_tools.grading.observe`), including the red
team's attacks that beat the in-kernel probe.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from test_grading import submit as _submit  # tests/ is on sys.path (pytest's rootdir)

from course_tools.grading import autograde as grading_run
from course_tools.grading import release as grading
from course_tools.grading import sandbox

ROOT = Path(__file__).resolve().parent.parent
SECRETS = ("7731", "5521", "9090", "return FACTOR * x", "np.tanh(x)")
CORRECT = {
    "ex1_solution": "def double(x):\n    return FACTOR * x",
    "ex2_solution": 'ratio = table["tensorflow"] / table["jax"]',
    "ex3_solution": "total = int(values.sum())",
    "ex4_solution": "def my_tanh(x):\n    return np.tanh(x)",
}
WRONG = {
    "ex1_solution": "def double(x):\n    return 0",
    "ex2_solution": "ratio = 99.0",
    "ex3_solution": "total = -1",
    "ex4_solution": "def my_tanh(x):\n    return x * 0 + 7",
}
# each trick runs at the top of the first answer; every answer is wrong
TRICKS = {
    "ast_drop_assert": """import ast
class _Drop(ast.NodeTransformer):
    def visit_Assert(self, node):
        return ast.Pass()
get_ipython().ast_transformers.append(_Drop())""",
    "input_pass": 'get_ipython().input_transformers_post.append(lambda lines: ["pass\\n"])',
    "input_cleanup": 'get_ipython().input_transformers_cleanup.append(lambda lines: ["pass\\n"])',
    "post_run_cell": """def _hide(result):
    result.error_in_exec = None
get_ipython().events.register("post_run_cell", _hide)
get_ipython().showtraceback = lambda *a, **k: None""",
    "custom_exc": """def _swallow(shell, etype, value, tb, tb_offset=None):
    return None
get_ipython().set_custom_exc((AssertionError, NameError, TypeError), _swallow)""",
    "numpy_patch": """np.isclose = lambda *a, **k: True
np.allclose = lambda *a, **k: True
np.testing.assert_allclose = lambda *a, **k: None""",
    "builtins_patch": """import builtins
builtins.abs = lambda x: 0
builtins.round = lambda x, n=0: 0""",
    "shadow_builtins": """def isinstance(*a):
    return True
def abs(x):
    return 0
def int(x):
    return -1""",
    "data_edit": """table["tensorflow"] = 99.0 * table["jax"]
values[:] = 0""",
    "lesson_function": """def reference_tanh(x):
    return x * 0 + 7""",
    "fake_grader": """__course_grader__ = lambda *a, **k: None""",
    "thread_reinstall": """import ast, threading, time
class _Drop(ast.NodeTransformer):
    def visit_Assert(self, node):
        return ast.Pass()
_drop = _Drop()
def _keep(shell=get_ipython()):
    while True:
        if _drop not in shell.ast_transformers:
            shell.ast_transformers.append(_drop)
        time.sleep(0.001)
threading.Thread(target=_keep, daemon=True).start()""",
    "trace_skip": """import sys
def _tracer(frame, event, arg):
    return None
sys.settrace(_tracer)""",
}
TRICK_ANSWERS = {**WRONG, "ex3_solution": "values[:] = 0\ntotal = 0"}


# session 22's red team of the trusted check, merged into two of the attacks above (one
# grading run for all): an answer that keeps its kernel from exporting any observation (the
# folder made a file: no trusted kernel was started, every question kept its disarmed
# in-process pass: 6/6 with wrong answers), and one that deletes the last question's
# observations after their export (that question was never decided: 2/6)
NO_EXPORT = """
import shutil
shutil.rmtree("observations", ignore_errors=True)
open("observations", "w").close()
"""
DROP_LAST_EXPORT = """
import os, threading, time
def _drop_last():
    while True:
        for _name in ("ex4_tests.json", "ex4_tests.npz"):
            try:
                os.remove(os.path.join("observations", _name))
            except OSError:
                pass
        time.sleep(0.0005)
threading.Thread(target=_drop_last, daemon=True).start()
"""


def _red_team() -> dict:
    """The red team's attacks that beat the in-kernel probe (tests/fixtures/redteam/
    make_submissions.py, written for lessons 00 and 04; the code is generic): each still
    fools the student's own kernel, and the trusted check must score it 0."""
    import importlib.util

    path = ROOT / "tests" / "fixtures" / "redteam" / "make_submissions.py"
    spec = importlib.util.spec_from_file_location("redteam_submissions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"evt": module.EVT + NO_EXPORT, "clos": module.CLOS + DROP_LAST_EXPORT,
            "comp": module.COMP, "handler": module.HANDLER,
            # pdpatch's idea on this lesson: an internal of a watched library that is not
            # watched itself (np.isclose looks less_equal up in numpy._core.numeric)
            "internals": "import numpy._core.numeric as _numeric\n"
                         "_numeric.less_equal = lambda *a, **k: True\n"}


RED_TEAM = _red_team()
# the red team's leak (issue 16, G): the answer's function, called by the tests, reads the
# tests cell's source (hidden tests included) and hides it, base64 in chunks, in the names of
# added built-ins, a shell attribute, an event and a refused path, which were echoed
LEAK_THROUGH_NAMES = """import base64, builtins, linecache, os, sys
def double(x):
    frame = sys._getframe(1)
    while frame is not None and not linecache.getlines(frame.f_code.co_filename):
        frame = frame.f_back  # past any wrapper, up to the tests cell that called
    source = "".join(linecache.getlines(frame.f_code.co_filename)) if frame else ""
    enc = base64.b64encode(source.encode()).decode().replace("/", "_").replace("+", "_")
    for i in range(0, len(enc), 36):
        builtins.__dict__[f"L{i:04d}_{enc[i:i + 36]}"] = 0
    shell = get_ipython()
    shell.__dict__["m_" + enc[:36]] = lambda: 0
    shell.events.callbacks["e_" + enc[:36]] = [lambda *a: None]
    try:
        open(os.path.join("/etc", "p_" + enc[:36]), "w")
    except OSError:
        pass
    return 0"""
# honest answers that lost points (issue 16, J and K): a helper named like a built-in that
# the tests never name, and rich's traceback hook (a display hook, no tampering)
HONEST_FORMAT = ("def format(x):\n    return FACTOR * x\n\n\ndef double(x):\n"
                 "    return format(x)")
# issue 16, H: as many threads as the process limit allows, held for 6 s. Only when grading
# as root, where each kernel has a user (and so a process limit) of its own; with a shared
# user the kernels started meanwhile died before replying to kernel_info
THREAD_BOMB = """import threading, time
threading.stack_size(64 * 1024)
_stop = threading.Event()
try:
    for _ in range(5000):
        threading.Thread(target=_stop.wait, daemon=True).start()
except RuntimeError:
    pass
time.sleep(6)
_stop.set()
""" + WRONG["ex1_solution"]
HONEST_RICH = "from rich.traceback import install\ninstall()\n" + CORRECT["ex1_solution"]


def _code(source: str, *tags: str):
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def adversarial_lesson(folder: Path, number: str = "07", name: str = "adv") -> Path:
    """Four exercises: hidden tests (ex1, ex4), a value from a lesson table (ex2), a lesson
    array (ex3), a lesson function as reference (ex4)."""
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    md = nbformat.v4.new_markdown_cell
    nb.cells = [
        md(f"# {number} · Adversarial {name}\n\n**What you will learn**\n\n- grading"),
        _code('import os\n\nPROFILE = os.environ.get("COURSE_PROFILE", "full")\nSEED = 0\n'
              "FACTOR = 2", "parameters"),
        _code('import numpy as np\n\ntable = {"tensorflow": 3.0, "jax": 1.5}\n'
              f"values = np.arange(1, 6)  # {name}\n\n\ndef reference_tanh(x):\n"
              "    return np.tanh(x)"),
        md("### Exercise 1: double it"),
        _code("### BEGIN SOLUTION\n" + CORRECT["ex1_solution"] + "\n### END SOLUTION",
              "solution"),
        _code("# points: 2\nassert double(1) == FACTOR\nassert double(0) == 0\n"
              "### BEGIN HIDDEN TESTS\nassert double(21) == 21 * FACTOR, 'secret message 7731'\n"
              "assert double(-3) == -3 * FACTOR  # hidden-only-line-5521\n"
              "### END HIDDEN TESTS", "tests"),
        md("### Exercise 2: the ratio in the table"),
        _code("### BEGIN SOLUTION\n" + CORRECT["ex2_solution"] + "\n### END SOLUTION",
              "solution"),
        _code('# points: 1\nassert isinstance(ratio, float)\n'
              'assert np.isclose(ratio, table["tensorflow"] / table["jax"])', "tests"),
        md("### Exercise 3: the total"),
        _code("### BEGIN SOLUTION\n" + CORRECT["ex3_solution"] + "\n### END SOLUTION",
              "solution"),
        _code("# points: 1\nassert type(total) is int\nassert total == int(values.sum())",
              "tests"),
        md("### Exercise 4: tanh"),
        _code("### BEGIN SOLUTION\n" + CORRECT["ex4_solution"] + "\n### END SOLUTION",
              "solution"),
        _code("# points: 2\n_x = np.linspace(-2, 2, 9)\n"
              "assert np.allclose(my_tanh(_x), reference_tanh(_x))\n"
              "### BEGIN HIDDEN TESTS\n"
              "assert abs(my_tanh(0.5) - 0.46211715726000974) < 1e-12  # hidden-tanh-9090\n"
              "### END HIDDEN TESTS", "tests"),
        _code("print('done')"),
    ]
    path = folder / f"{number}_{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _leak_answers(paths: dict) -> dict:
    """Answers that look for the hidden tests in the kernel and through the file system and
    raise an exception named after what they found (ex2), plus a probe of the sandbox (ex3)."""
    hunt = f"""import linecache, os, re, subprocess
_found = "\\n".join(In)
_found += "".join("".join(e[2]) for e in list(linecache.cache.values()) if len(e) > 2 and e[2])
for _path in ({str(paths['lesson'])!r}, {str(paths['build'])!r}):
    try:
        _found += open(_path).read()
    except Exception:
        pass
    try:
        _found += subprocess.run(["cat", _path], capture_output=True, text=True).stdout
    except Exception:
        pass
    try:
        _fd = os.open(os.path.dirname(_path), os.O_RDONLY)
        _found += os.read(os.open(os.path.basename(_path), os.O_RDONLY, dir_fd=_fd), 10**6).decode()
    except Exception:
        pass
_hits = sorted(set(re.findall(r"secret message \\d+|hidden-only-line-\\d+|hidden-tanh-\\d+|BEGIN[ ]HIDDEN", _found)))
print("HITS", len(_hits))
raise type("Leak_" + "_".join(re.sub(r"\\W", "_", h) for h in _hits) if _hits else "NothingFound",
           (Exception,), {{}})(" | ".join(_hits) or "nothing")
"""
    probe = f"""import os, signal, socket
def _try(label, fn):
    try:
        fn()
        print(label, "OPEN")
    except Exception as exc:
        print(label, "BLOCKED", type(exc).__name__)
_try("NET", lambda: socket.create_connection(("1.1.1.1", 53), timeout=3))
_try("READ", lambda: open({str(paths['lesson'])!r}).read())
_try("WRITE", lambda: open({str(paths['outside'])!r}, "w").write("x"))
_try("WRITEFD", lambda: os.write(os.open("escaped_fd.txt", os.O_WRONLY | os.O_CREAT,
     dir_fd=os.open({str(paths['outside'].parent)!r}, os.O_RDONLY)), b"x"))
_try("SIGNAL", lambda: os.kill({os.getpid()}, signal.SIGTERM))
print("ROOT", sorted(os.listdir({str(ROOT)!r})) if os.path.isdir({str(ROOT)!r}) else "absent")
print("PIDS", len([p for p in os.listdir("/proc") if p.isdigit()]))
total = int(values.sum())
"""
    return {**CORRECT, "ex2_solution": hunt, "ex3_solution": probe}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if sandbox.probe()[0] is None:
        pytest.fail("bubblewrap is needed (make test installs it): " + sandbox.probe()[1])
    base = tmp_path_factory.mktemp("adversarial")
    notebooks = base / "nb"
    adversarial_lesson(notebooks)
    adversarial_lesson(notebooks, "08", "other")
    # bomb first: its kernel holds all the threads it may while the next kernels start
    # one student per case, several honest cases per student where they do not interact
    # (each graded notebook costs a kernel, and one more for the trusted check)
    ids = (["bomb"] * (os.geteuid() == 0) + ["good", "wrong", "edited_roster", "wrong_lesson",
                                             "sigint", "leaky", "killer", "symlink_passwd",
                                             "symlink_lesson", "hardlink_lesson", "big_name",
                                             "leak_names", "honest_format"]
           + [f"trick_{name}" for name in TRICKS]
           + [f"trick_redteam_{name}" for name in RED_TEAM])
    assign_roster = base / "assign.csv"
    assign_roster.write_text("id,name,FACTOR\n" + "".join(
        f"{i},{i},{3 if i == 'edited_roster' else ''}\n" for i in ids))
    grade_roster = base / "grade.csv"
    grade_roster.write_text("id,name,FACTOR\n" + "".join(
        f"{i},{i},{5 if i == 'edited_roster' else ''}\n" for i in ids))
    releases = base / "releases"
    grading.assign(assign_roster, releases, notebooks_dir=notebooks, lessons=["07", "08"])
    subs = base / "subs"
    name = "07_adv.ipynb"
    outside = base / "escaped.txt"
    build_copy = ROOT / "build" / "notebooks" / name  # what an executed instructor copy is
    paths = {"lesson": notebooks / name, "build": build_copy, "outside": outside}

    def rel(student, lesson=name):
        return releases / student / lesson

    def target(student):
        return subs / student / name

    _submit(rel("good"), target("good"), CORRECT)
    _submit(rel("wrong"), target("wrong"), WRONG)
    # the roster edited since assign, and a notebook written without cell ids (older Jupyter)
    no_ids = _submit(rel("edited_roster"), target("edited_roster"), CORRECT)
    raw = json.loads(no_ids.read_text())
    raw["nbformat_minor"] = 4
    for cell in raw["cells"]:
        cell.pop("id", None)
    no_ids.write_text(json.dumps(raw))
    _submit(rel("wrong_lesson", "08_other.ipynb"), target("wrong_lesson"),
            CORRECT)
    _submit(rel("sigint"), target("sigint"), {
        **CORRECT, "ex3_solution": "import signal, time\nsignal.signal(signal.SIGINT, "
        "signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)"})
    _submit(rel("leaky"), target("leaky"), _leak_answers(paths))  # ex3 probes the sandbox
    _submit(rel("killer"), target("killer"), {
        **WRONG, "ex1_solution": "import os, signal\nfor _pid in (os.getppid(), 1):\n    try:\n"
        "        os.kill(_pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        "os.killpg(0, signal.SIGTERM)\n" + WRONG["ex1_solution"]})
    for student, link in (("symlink_passwd", "/etc/passwd"),
                          ("symlink_lesson", str(notebooks / name))):
        target(student).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link, target(student))
    target("hardlink_lesson").parent.mkdir(parents=True, exist_ok=True)
    os.link(notebooks / name, target("hardlink_lesson"))
    _submit(rel("big_name"), target("big_name"), {
        **WRONG, "ex2_solution": "raise type('A' * 300 + 'secret message 7731', (Exception,), "
        "{})('return FACTOR * x')"})
    _submit(rel("leak_names"), target("leak_names"), {**WRONG,
                                                       "ex1_solution": LEAK_THROUGH_NAMES})
    # honest: a helper `format`, rich's traceback hook, built-in names reused as variables
    _submit(rel("honest_format"), target("honest_format"), {
        **CORRECT, "ex1_solution": HONEST_RICH.replace(CORRECT["ex1_solution"], HONEST_FORMAT),
        "ex3_solution": "max = 3\nlist = [1]\ntotal = int(values.sum())"})
    for trick, code in {**TRICKS, **{f"redteam_{k}": v for k, v in RED_TEAM.items()}}.items():
        answers = dict(TRICK_ANSWERS)
        answers["ex1_solution"] = code + "\n" + answers["ex1_solution"]
        _submit(rel(f"trick_{trick}"), target(f"trick_{trick}"), answers)
    if "bomb" in ids:
        _submit(rel("bomb"), target("bomb"), {**WRONG, "ex1_solution": THREAD_BOMB})
    tests_source = grading.load_lesson(notebooks / name).cell("ex1_tests").source
    shutil.rmtree(releases)  # nothing of the releases is needed any more
    lines = []
    options = grading_run.Options(cell_timeout=8, lesson_cell_timeout=30, notebook_timeout=120,
                                  jobs=2, profile="smoke")
    grades = grading_run.grade(subs, grade_roster, base / "out", notebooks_dir=notebooks,
                               lessons=["07"], options=options, progress=lines.append)
    out = base / "out"
    return {"grades": {g.student.id: g for g in grades}, "out": out, "lines": lines,
            "outside": outside, "ids": ids, "ex1_tests": tests_source,
            "feedback": {p.stem: p.read_text() for p in (out / "feedback").glob("*.md")},
            "csv": (out / "grades.csv").read_text()}


def _outputs(graded, student: str, gid: str) -> str:
    nb = nbformat.read(graded["out"] / "graded" / student / "07_adv.ipynb", as_version=4)
    cell = next(c for c in nb.cells if grading._grade_id(c) == gid)
    return json.dumps(cell.outputs)


SLOW = [pytest.mark.slow, pytest.mark.xdist_group("adversarial-class")]


def slow(test):
    """One grading run for all: slow, and on one xdist worker."""
    for mark in SLOW:
        test = mark(test)
    return test


@slow
def test_the_run_completes_for_every_student_in_the_sandbox(graded):
    assert set(graded["grades"]) == set(graded["ids"])
    assert graded["lines"][0].startswith("isolation: bubblewrap")
    assert set(graded["feedback"]) == set(graded["ids"])


@slow
@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_every_trick_with_wrong_answers_scores_zero(graded, trick):
    g = graded["grades"][f"trick_{trick}"]
    assert g.total == 0, (trick, g.reason)


@slow
@pytest.mark.parametrize("trick", sorted(RED_TEAM))
def test_the_red_teams_attacks_fool_the_students_kernel_but_score_zero(graded, trick):
    """Issue 16, the trusted check: each attack still makes a tests cell pass in the
    student's own kernel (the in-process probe cannot win), yet every question is decided by
    the trusted kernel, which ran none of the student's code, and scores 0."""
    student = f"trick_redteam_{trick}"
    g = graded["grades"][student]
    assert g.total == 0, (trick, g.reason)
    nb = nbformat.read(graded["out"] / "graded" / student / "07_adv.ipynb", as_version=4)
    fooled = [grading._grade_id(c) for c in nb.cells
              if (grading._grade_id(c) or "").endswith("_tests") and c.get("execution_count")
              and not any(o.get("output_type") == "error" for o in c.outputs)]
    assert fooled, (trick, "the attack no longer fools the student's kernel: use a stronger one")
    assert "passed in the student's own kernel but failed the trusted check" in g.reason, g.reason
    notes = g.lessons[0].notes
    assert any(n.startswith("graded by the trusted check") and "ex1, ex2, ex3, ex4" in n
               for n in notes), notes
    # what the answer kept from the export is refused, never graded in its own kernel
    unread = [q.key for q in g.lessons[0].questions if "could not be read" in q.reason]
    assert unread == {"evt": ["ex1", "ex2", "ex3", "ex4"], "clos": ["ex4"]}.get(trick, []), (
        trick, [q.reason for q in g.lessons[0].questions])


@slow
def test_every_question_of_the_class_lesson_is_decided_by_the_trusted_check(graded):
    """Every question of the adversarial lesson is replayable: for the honest and the wrong
    student alike the verdict comes from the trusted kernel, whose notebook is kept for the
    instructor next to the student's."""
    for student in ("good", "edited_roster", "honest_format"):
        notes = graded["grades"][student].lessons[0].notes
        assert any("graded by the trusted check" in n and "ex1, ex2, ex3, ex4" in n
                   for n in notes), (student, notes)
        assert not any(n.startswith("graded in your own kernel") for n in notes), notes
        assert (graded["out"] / "graded" / student / "07_adv.trusted.ipynb").is_file()
    # every tests cell failed in the wrong student's own kernel: nothing to confirm, so no
    # trusted kernel was started (it saves one lesson run per failing notebook)
    assert not (graded["out"] / "graded" / "wrong" / "07_adv.trusted.ipynb").exists()
    assert graded["grades"]["wrong"].total == 0


@slow
@pytest.mark.parametrize("trick", ["ast_drop_assert", "input_pass", "input_cleanup",
                                   "post_run_cell", "custom_exc", "numpy_patch",
                                   "builtins_patch", "fake_grader", "trace_skip",
                                   "thread_reinstall"])
def test_tricks_on_hooks_and_libraries_are_reported_as_tampering(graded, trick):
    g = graded["grades"][f"trick_{trick}"]
    assert "tampered" in g.status, (trick, g.reason)


@slow
def test_restored_lesson_data_is_a_note_not_an_accusation(graded):
    g = graded["grades"]["trick_data_edit"].lessons[0]
    assert any("restored" in n and "table" in n for n in g.notes), g.notes


@slow
def test_wrong_answers_score_zero_and_correct_ones_full_marks(graded):
    assert graded["grades"]["wrong"].total == 0
    good = graded["grades"]["good"]
    assert good.total == good.max_points == 6 and good.status == "ok", good.reason


@slow
def test_no_solution_or_hidden_test_line_reaches_feedback_or_grades_csv(graded):
    for student, text in {**graded["feedback"], "grades.csv": graded["csv"]}.items():
        for secret in SECRETS:
            assert secret not in text, (student, secret)


@slow
def test_hidden_tests_do_not_leak_through_the_names_of_tampering(graded):
    """Issue 16, G: what the answer read during the tests left through student-chosen names
    (added built-ins, a shell attribute, an event, a refused path); now only counted."""
    import base64

    enc = base64.b64encode(graded["ex1_tests"].encode()).decode()
    enc = enc.replace("/", "_").replace("+", "_")
    g = graded["grades"]["leak_names"]
    lesson = g.lessons[0]
    assert "tampered" in g.status and g.total == 0, g.reason
    assert any(t.startswith("added built-in name(s):") and "other name(s)" in t
               for t in lesson.tampering), lesson.tampering
    for text in (graded["feedback"]["leak_names"], graded["csv"]):
        for start in range(0, 120, 4):
            assert enc[start:start + 12] not in text, (start, enc[start:start + 12])


@slow
def test_a_thread_bomb_starves_no_other_kernel(graded):
    """Issue 16, H: every kernel has its own user, so its own process limit: the students
    graded while the bomb held its threads lost nothing (only the known crasher crashed)."""
    if "bomb" not in graded["grades"]:
        pytest.skip("per-kernel users (and process limits) need a grader running as root")
    assert graded["grades"]["bomb"].total == 0
    crashed = {i for i, g in graded["grades"].items() if "crashed" in g.status}
    assert crashed <= {"killer"}, {i: graded["grades"][i].reason for i in crashed}


@slow
def test_honest_helpers_named_like_built_ins_and_rich_tracebacks_keep_their_points(graded):
    """Issue 16, J: ``def format`` used by the answer's own function stays (the tests never
    name ``format``); K: ``rich.traceback.install()`` is a note, not tampering."""
    g = graded["grades"]["honest_format"]
    assert g.status == "ok" and g.total == 6, g.reason
    assert not any("built-ins" in n for n in graded["grades"]["honest_format"].lessons[0].notes)
    notes = graded["grades"]["honest_format"].lessons[0].notes
    assert any("traceback display hook" in n and "showtraceback" in n for n in notes), notes
    shadow = graded["grades"]["trick_shadow_builtins"].lessons[0].notes
    assert any("set aside" in n and "isinstance" in n for n in shadow), shadow


@slow
def test_the_kernel_never_sees_hidden_tests_or_the_lesson(graded):
    """The hunt found nothing: not in In/_ih, linecache, the lesson, build/ (also by cat and
    dir_fd); the filter did not have to act."""
    hunt = _outputs(graded, "leaky", "ex2_solution")
    assert "NothingFound" in hunt and "HITS 0" in hunt, hunt


@slow
def test_the_sandbox_blocks_network_reads_writes_and_signals(graded):
    probe = _outputs(graded, "leaky", "ex3_solution")
    for label in ("NET", "READ", "WRITE", "WRITEFD", "SIGNAL"):
        assert f"{label} BLOCKED" in probe, (label, probe)
    # the course repository shows only what the kernel needs: no lessons, build/, .git/
    listing = probe.split("ROOT ", 1)[1].split("\\n", 1)[0]
    assert "course_lib" in listing, probe
    for hidden in ("notebooks", "build", ".git", "tests", "course_tools", "student"):
        assert f"'{hidden}'" not in listing, (hidden, listing)
    assert not graded["outside"].exists()
    assert not (graded["outside"].parent / "escaped_fd.txt").exists()
    assert graded["grades"]["leaky"].total == 5  # ex2 raised what its hunt found


@slow
def test_exception_names_are_cut(graded):
    g = graded["grades"]["big_name"].lessons[0]
    ex2 = next(q for q in g.questions if q.key == "ex2")
    assert "AAAA" not in ex2.reason and ex2.points == 0


@slow
def test_links_are_refused_and_nothing_of_their_target_is_shown(graded):
    for student in ("symlink_passwd", "symlink_lesson", "hardlink_lesson"):
        g = graded["grades"][student]
        assert g.status == "unreadable" and g.total == 0, (student, g.reason)
        assert "root:" not in graded["feedback"][student]
    assert "symbolic link" in graded["grades"]["symlink_passwd"].reason
    assert "hard link" in graded["grades"]["hardlink_lesson"].reason


@slow
def test_a_student_signalling_the_grader_stops_only_their_own_notebook(graded):
    assert graded["grades"]["killer"].total == 0
    assert graded["grades"]["good"].total == 6  # graded in the same run


@slow
def test_honest_edge_cases_are_not_called_tampering(graded):
    grades = graded["grades"]
    for student in ("edited_roster", "honest_format"):  # no cell ids / built-in names
        g = grades[student]
        assert g.status == "ok" and g.total == 6, (student, g.reason)
    assert "roster was edited since assign" in grades["edited_roster"].reason
    assert grades["wrong_lesson"].status == "wrong lesson"
    assert "08_other.ipynb" in grades["wrong_lesson"].reason


@slow
def test_an_uninterruptible_answer_costs_only_its_question(graded):
    g = graded["grades"]["sigint"].lessons[0]
    points = {q.key: q.points for q in g.questions}
    assert points == {"ex1": 2, "ex2": 1, "ex3": 0, "ex4": 2}, g.questions


# --------------------------------------------------------------------------- no kernels


def test_grade_refuses_a_non_empty_out_folder(tmp_path):
    notebooks = tmp_path / "nb"
    adversarial_lesson(notebooks)
    roster = tmp_path / "r.csv"
    roster.write_text("id,name\na,A\n")
    (tmp_path / "subs").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.md").write_text("an earlier run")
    with pytest.raises(grading.GradingError, match="not empty"):
        grading_run.grade(tmp_path / "subs", roster, tmp_path / "out", notebooks_dir=notebooks,
                          options=grading_run.Options(isolation="none"))
    assert (tmp_path / "out" / "old.md").read_text() == "an earlier run"


@pytest.mark.parametrize("value, message", [("-5", "from 0 to 4294967295"),
                                            ("100000000000000000000", "from 0 to"),
                                            ("1.5", "whole number")])
def test_roster_seeds_are_range_checked(tmp_path, value, message):
    notebooks = tmp_path / "nb"
    lesson = grading.load_lesson(adversarial_lesson(notebooks))
    roster = tmp_path / "r.csv"
    roster.write_text(f"id,name,seed\na,A,{value}\n")
    with pytest.raises(grading.RosterError, match=message):
        grading.read_roster(roster, [lesson])


def test_wrap_tests_keeps_line_numbers_and_the_last_value():
    from course_tools.grading.worker import wrap_tests

    source = "# points: 2\nearned = 1\nearned + (\n    1)"
    wrapped = wrap_tests(source, "abc")
    assert wrapped.splitlines()[:2] == source.splitlines()[:2]
    assert len(wrapped.splitlines()) == len(source.splitlines())
    assert wrapped.splitlines()[2].startswith("__course_grader__('done', 'abc', (earned")
    assert wrap_tests("assert x", "c").endswith("\n__course_grader__('done', 'c')\n")


def test_withhold_removes_any_text_quoting_a_secret_line(tmp_path):
    lesson = grading.load_lesson(adversarial_lesson(tmp_path / "nb"))
    secrets = grading.secret_lines(lesson)
    assert grading_run.withhold("your answer raised X: assert double(21) == 21 * FACTOR, "
                                "'secret message 7731'", secrets) == grading_run.WITHHELD
    assert grading_run.withhold("your answer raised ValueError: bad shape", secrets) == \
        "your answer raised ValueError: bad shape"


def test_grade_without_a_sandbox_needs_an_explicit_choice(monkeypatch):
    monkeypatch.setattr(sandbox, "probe", lambda: (None, "bubblewrap is not installed"))
    monkeypatch.delenv("GRADER_ISOLATION", raising=False)
    with pytest.raises(grading.GradingError, match="no sandbox .*GRADER_ISOLATION=none"):
        grading_run.resolve_isolation(grading_run.Options())
    isolation, line = grading_run.resolve_isolation(grading_run.Options(isolation="none"))
    assert isolation is sandbox.Isolation.NONE and "chosen explicitly" in line


def test_cells_without_ids_are_matched_by_content():
    """check_submission on a notebook without cell ids matches the lesson cells by content."""
    lesson_nb = nbformat.v4.new_notebook()
    lesson_nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("x = 1")]
    submission = copy.deepcopy(lesson_nb)
    for cell in submission.cells:
        cell.pop("id", None)
    tampering, notes, _ = grading_run.check_submission(lesson_nb, submission)
    assert tampering == [] and notes == []


def test_refused_paths_are_counted_per_top_folder_never_echoed():
    """Issue 16, G: the guard's log holds paths the kernel chose; only counts and a short top
    folder reach the feedback."""
    chunk = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" * 2
    log = (f"write\t/etc/p_{chunk}\nwrite\t/etc/other\nread\t/{chunk}/x\n"
           "bogus\t/etc/x\nwrite\t/root/.cache/y\n")
    entries = grading_run._refusals(log)
    assert entries == ["tried to read 1 path(s) under another folder",
                       "tried to write 2 path(s) under /etc",
                       "tried to write 1 path(s) under /root"]
    assert grading_run._cut_tokens(f"added {chunk}") == f"added {chunk[:20]}…"


def test_tests_cells_name_only_their_built_ins():
    """Issue 16, J: the probe sets aside only the built-in names a tests cell refers to (and
    nothing else of the hidden tests reaches the kernel)."""
    from course_tools.grading import worker

    source = "assert isinstance(x, int)\n### BEGIN HIDDEN TESTS\nassert secret_name(abs(y))\n"
    assert worker.names_used(source) == ["abs", "int", "isinstance"]
    assert worker.names_used("%time max(x)\nlen(y)") == ["len", "max"]  # magics: identifiers
    lesson = [nbformat.v4.new_code_cell("import numpy as np\ntable = {}\ndef f():\n    pass")]
    assert worker.assigned_names(lesson) == ["f", "np", "table"]
    # a lesson function the tests call looks its built-ins up in the notebook's globals
    helper = [nbformat.v4.new_code_cell("print(len(x))\ndef ref(x):\n    return abs(x)\n"
                                        "g = lambda y: round(y)")]
    assert worker.names_in_functions(helper) == ["abs", "round"]


def test_a_kernel_that_died_starting_is_recognised():
    from nbclient.exceptions import DeadKernelError

    from course_tools.grading import worker

    assert worker._died_at_start(RuntimeError("Kernel died before replying to kernel_info"))
    assert worker._died_at_start(DeadKernelError("gone"))
    assert not worker._died_at_start(RuntimeError("something else"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0
                    or shutil.which("setpriv") is None,
                    reason="per-kernel users need a grader running as root with setpriv")
def test_each_kernel_gets_a_user_of_its_own(tmp_path):
    """Issue 16, H: RLIMIT_NPROC counts per user, so each kernel runs as its own."""
    first, second = sandbox.claim_uid(), sandbox.claim_uid()
    try:
        assert first is not None and second is not None
        assert first != second and min(first, second) >= sandbox.KERNEL_UID_BASE
        # another grader process on the machine skips the slots held here (flock)
        import subprocess
        import sys

        other = subprocess.run([sys.executable, "-c", "from course_tools.grading import "
                                "sandbox; print(sandbox.claim_uid())"], capture_output=True,
                               text=True, timeout=60, cwd=ROOT)
        assert int(other.stdout) not in (first, second), other.stdout + other.stderr
        folder = tmp_path / "work"
        (folder / "sub").mkdir(parents=True)
        sandbox.give_to_kernel(folder, uid=first)
        assert (folder / "sub").stat().st_uid == first
        if sandbox.probe()[0] is not None:
            argv = sandbox.kernel_command("python", work=folder, ipc=tmp_path, log_dir=tmp_path,
                                          hook_dir=tmp_path, hidden=[], visible=[],
                                          limits=sandbox.Limits(), uid=second)
            assert f"--reuid={second}" in argv and f"--regid={second}" in argv
    finally:
        sandbox.release_uid(first)
        sandbox.release_uid(second)
    # released slots can be claimed again (kernels of a parallel run may hold others)
    assert not {first, second} & {sandbox.KERNEL_UID_BASE + s for s in sandbox._SLOTS}
