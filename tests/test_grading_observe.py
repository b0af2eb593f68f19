"""Issue 16, the trusted check: the observation format (:mod:`course_tools.grading.observe`)
and the static plan of what each question's tests read (:func:`autograde.exercise_plan`).

Fast: no kernel, no framework import (JAX only in the one test marked slow).
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import nbformat
import numpy as np
import pandas as pd
import pytest

from course_tools.grading import autograde, observe
from course_tools.grading import release as grading


def roundtrip(value, tmp_path, name="value"):
    node, arrays = observe.encode(value)
    observe.dump(tmp_path / name, {"values": {"x": node}, "calls": {}}, arrays)
    payload, loaded = observe.load(tmp_path / name)
    return payload["values"]["x"], loaded


class AlwaysEqual(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


def test_an_int_subclass_is_not_data_and_exact_types_are():
    node, _ = observe.encode(AlwaysEqual(3))
    assert node["t"] == "opaque" and "AlwaysEqual" in node["type"]
    assert not observe.is_data(node)
    assert "not data (" in observe.describe(node)
    for value in (3, True, None, 2.5, "s", [1], (1,), {"a": 1}, np.float32(1), np.arange(2)):
        assert observe.is_data(observe.encode(value)[0]), value


def test_opaque_objects_are_named_never_encoded():
    class Model:
        pass

    for value, name in ((Model(), "Model"), (lambda: 0, "function"), (object(), "object"),
                        ({(1, 2): 3}, "dict"), (b"x", "bytes")):
        node, arrays = observe.encode(value)
        assert node["t"] == "opaque" and name in node["type"] and arrays == {}
        with pytest.raises(observe.ObservationError):
            observe.decode(node, arrays)


def test_nan_infinities_and_every_float_bit_survive(tmp_path):
    values = [float("nan"), float("inf"), -0.0, 0.1, np.array([np.nan, 1.0]),
              np.float64("nan")]
    node, arrays = roundtrip(values, tmp_path)
    back = observe.decode(node, arrays)
    assert np.isnan(back[0]) and back[1] == float("inf") and str(back[2]) == "-0.0"
    assert back[3] == 0.1 and np.isnan(back[4][0]) and np.isnan(back[5])
    assert type(back[5]) is np.float64
    again, again_arrays = observe.encode(back)
    assert observe.same(node, arrays, again, again_arrays)  # NaN equals NaN here


def test_nested_pytrees_keep_structure_types_and_dtypes(tmp_path):
    tree = {"layers": [{"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3)}],
            "step": 7, "names": ("a", "b"), 3: None, "flag": np.bool_(True),
            "chosen": {"jax", ("x", 1)}, "frozen": frozenset({1.5})}
    node, arrays = roundtrip(tree, tmp_path)
    back = observe.decode(node, arrays)
    assert list(back) == ["layers", "step", "names", 3, "flag", "chosen", "frozen"]
    assert back["chosen"] == {"jax", ("x", 1)} and type(back["frozen"]) is frozenset
    assert type(back["names"]) is tuple and type(back["step"]) is int
    assert back["layers"][0]["kernel"].dtype == np.float32
    assert np.array_equal(back["layers"][0]["kernel"], tree["layers"][0]["kernel"])
    assert type(back["flag"]) is np.bool_
    other = {**tree, "step": 8}
    assert not observe.same(node, arrays, *observe.encode(other))


def test_pandas_tables_round_trip(tmp_path):
    table = pd.DataFrame({"import": ["jax", "tensorflow"], "seconds": [1.5, np.nan]})
    node, arrays = roundtrip(table, tmp_path)
    back = observe.decode(node, arrays)
    assert list(back.columns) == ["import", "seconds"] and back["import"].tolist() == [
        "jax", "tensorflow"]
    assert back["seconds"].iloc[0] == 1.5 and np.isnan(back["seconds"].iloc[1])
    series = observe.decode(*observe.encode(table.set_index("import")["seconds"]))
    assert series["jax"] == 1.5 and series.name == "seconds"


def test_pandas_level_names_survive_so_tests_can_select_by_them(tmp_path):
    # lesson 10's tables: a MultiIndex (model, batch) that its tests read with xs(level=...)
    table = pd.DataFrame({"model": ["mlp", "mlp", "cnn"], "batch": [1, 32, 1],
                          "ms": [0.5, 2.0, 1.5]}).set_index(["model", "batch"])
    table.columns.name = "metric"
    node, arrays = roundtrip(table, tmp_path)
    back = observe.decode(node, arrays)
    assert list(back.index.names) == ["model", "batch"] and back.columns.name == "metric"
    assert back.xs("mlp", level="model")["ms"].tolist() == [0.5, 2.0]
    series = observe.decode(*observe.encode(table["ms"]))
    assert list(series.index.names) == ["model", "batch"]
    bad = {**node, "index_names": observe.encode(["model"])[0]}  # one name for two levels
    with pytest.raises(observe.ObservationError, match="level names"):
        observe.decode(bad, arrays)
    bad = {**node, "index_names": observe.encode([1.5, None])[0]}  # a name that is no name
    with pytest.raises(observe.ObservationError, match="level names"):
        observe.decode(bad, arrays)


def test_a_pickle_in_the_archive_is_refused(tmp_path):
    class Bomb:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    buffer = io.BytesIO()
    np.savez(buffer, a0=np.array([Bomb()], dtype=object))
    with pytest.raises(observe.ObservationError, match="not data|valid array"):
        observe.parse(json.dumps({"format": 1}).encode(), buffer.getvalue())
    assert not (tmp_path / "pwned").exists()


def test_compressed_members_and_oversized_arrays_are_refused(tmp_path):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a0=np.zeros(10**6))  # a zip bomb would be compressed too
    with pytest.raises(observe.ObservationError, match="compressed"):
        observe.parse(b'{"format": 1}', buffer.getvalue())
    buffer = io.BytesIO()
    np.savez(buffer, a0=np.zeros(1000))
    with pytest.raises(observe.ObservationError, match="larger than the limit"):
        observe.parse(b'{"format": 1}', buffer.getvalue(), max_array_bytes=100)
    with zipfile.ZipFile(buffer := io.BytesIO(), "w") as archive:
        archive.writestr("../evil.npy", b"x")
    with pytest.raises(observe.ObservationError, match="not an array"):
        observe.parse(b'{"format": 1}', buffer.getvalue())


def test_oversize_files_links_and_bad_json_are_refused(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2000)
    with pytest.raises(observe.ObservationError, match="larger than"):
        observe.read_regular(big, 1000)
    (tmp_path / "link.json").symlink_to("/etc/passwd")
    with pytest.raises(observe.ObservationError, match="cannot be opened"):
        observe.read_regular(tmp_path / "link.json", 10**6)
    (tmp_path / "elsewhere").symlink_to(tmp_path)  # a kernel-made folder link
    with pytest.raises(observe.ObservationError, match="cannot be opened"):
        observe.read_regular(tmp_path / "elsewhere" / "big.json", 10**6, folder_too=True)
    assert observe.read_regular(tmp_path / "big.json", 10**6, folder_too=True) == b" " * 2000
    os.link(big, tmp_path / "hard.json")
    with pytest.raises(observe.ObservationError, match="regular file of its own"):
        observe.read_regular(big, 10**6)
    empty = io.BytesIO()
    np.savez(empty)
    for text in (b'{"format": 1, "x": NaN}', b'{"format": 1, "format": 1}', b"[" * 100000,
                 b'{"format": 2}', b"\xff"):
        with pytest.raises(observe.ObservationError):
            observe.parse(text, empty.getvalue())


@pytest.mark.parametrize("node", [
    {"t": "int", "v": "1e9"}, {"t": "int", "v": "٣"}, {"t": "int", "v": 3},
    {"t": "float", "v": "1" * 100}, {"t": "bool", "v": 1}, {"t": "list"},
    {"t": "dict", "items": [[{"t": "list", "items": []}, {"t": "none"}]]},
    {"t": "ndarray", "ref": "a9"}, {"t": "array", "ref": "a0", "framework": "evil"},
    {"t": "set", "items": [{"t": "list", "items": []}]},
    {"t": "eval", "v": "__import__('os')"}, {"t": "missing"}, [1, 2]])
def test_the_decoder_refuses_anything_encode_does_not_make(node):
    with pytest.raises(observe.ObservationError):
        observe.decode(node, {"a0": np.zeros(2)})


def test_deep_nesting_is_cut_when_encoding_and_refused_when_decoding():
    deep: list = []
    for _ in range(100):
        deep = [deep]
    assert "too large" in observe.describe(observe.encode(deep)[0])
    node: dict = {"t": "none"}
    for _ in range(100):
        node = {"t": "list", "items": [node]}
    with pytest.raises(observe.ObservationError, match="deeply"):
        observe.decode(node, {})


def test_recorded_calls_replay_in_order_with_their_exceptions():
    space = {}

    def answer(n):
        if n < 0:
            raise ValueError("negative")
        if n == 99:
            raise type("SecretLeak" * 10, (Exception,), {})("x" * 1000)
        return np.arange(n) if n < 5 else answer(n - 1)  # recursion: recorded once

    space["answer"] = answer
    recorder = observe.Recorder(space, ["answer", "absent"])
    calls = []
    for n in (3, 7, -1, 99):
        try:
            calls.append(space["answer"](n))
        except Exception:  # noqa: BLE001 - recorded
            pass
    recorder.restore()
    assert space["answer"] is answer
    payload, arrays = observe.observe(space, ["answer", "absent"], recorder)
    assert payload["values"] == {"answer": {"t": "callable"}, "absent": {"t": "missing"}}
    record = payload["calls"]["answer"]
    assert len(record) == 4 and record[2]["raised"] == ["ValueError", "negative", "ValueError"]
    assert len(record[3]["raised"][0]) <= 40 and len(record[3]["raised"][1]) <= 300
    replay = observe.replay_function("answer", record, arrays)
    assert np.array_equal(replay(3), np.arange(3)) and np.array_equal(replay(7), np.arange(4))
    with pytest.raises(ValueError, match="negative"):
        replay(-1)
    with pytest.raises(Exception) as raised:
        replay(99)
    assert type(raised.value).__name__.startswith("SecretLeak")
    with pytest.raises(observe.ReplayError, match="called more often"):
        replay(3)


def test_results_are_encoded_at_call_time():
    box = np.zeros(3)
    space = {"get": lambda: box}
    recorder = observe.Recorder(space, ["get"])
    space["get"]()
    box[:] = 7  # the tests (or the answer) change it afterwards
    payload, arrays = observe.observe(space, ["get"], recorder)
    assert np.array_equal(observe.replay_function("get", payload["calls"]["get"], arrays)(),
                          np.zeros(3))


@pytest.mark.slow
def test_jax_arrays_are_tagged_and_rebuilt_as_jax_arrays(tmp_path):
    import jax.numpy as jnp

    node, arrays = roundtrip({"w": jnp.ones(3)}, tmp_path)
    assert node["items"][0][1]["framework"] == "jax"
    back = observe.decode(node, arrays)
    assert isinstance(back["w"], type(jnp.ones(1))) and float(back["w"].sum()) == 3.0
    assert isinstance(observe.decode(node, arrays, frameworks=False)["w"], np.ndarray)


# --------------------------------------------------------------------------- the static plan


def _cell(source: str, *tags: str):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = list(tags)
    return cell


def test_the_plan_names_what_the_tests_read_of_the_answer(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 07 · Plan\n\n**What you will learn**\n\n- plans"),
        _cell('import os\nPROFILE = os.environ.get("COURSE_PROFILE", "full")\nSEED = 0',
              "parameters"),
        _cell("import numpy as np\nfrom math import pi\ndata = np.arange(5)\n"
              "def helper(x):\n    return x"),
        nbformat.v4.new_markdown_cell("### Exercise 1: plan"),
        _cell("given = data * 2  # given line, outside the solution\n"
              "### BEGIN SOLUTION\ndef f(x):\n    local = x + 1\n    return local\n"
              "result = f(given) + SEED\nfor item in range(2):\n    pass\n"
              "### END SOLUTION", "solution"),
        _cell("derived = result.sum()  # a lesson cell between answer and tests"),
        _cell("# points: 1\nfor item in range(3):\n    assert f(item) == item + 1\n"
              "assert derived == result.sum() and helper(pi)\n"
              "assert np.array_equal(given, data * 2) and local is None\n"
              "assert [_k for _k in range(2)]", "tests"),
        nbformat.v4.new_markdown_cell("### Exercise 2: inside a function"),
        _cell("setup = data + 1\n\n\ndef fix(x):\n    ### BEGIN SOLUTION\n    doubled = x * 2\n"
              "    return doubled\n    ### END SOLUTION\n\n\nfixed = fix(setup)", "solution"),
        _cell("# points: 1\nassert np.array_equal(fix(setup), fixed)", "tests"),
    ]
    path = tmp_path / "07_plan.ipynb"
    nbformat.write(nb, path)
    plan = autograde.exercise_plan(grading.load_lesson(path))
    # f, result (solution), derived (a cell between); `local` is f's own, `item` the tests'
    assert plan["ex1_tests"]["observed"] == ["derived", "f", "result"]
    # data: read by the answer, not bound; given: bound by the given line only; np, pi
    # (imports), helper (not read by the answer) and built-ins are no inputs
    assert plan["ex1_tests"]["inputs"] == ["data", "given"]
    # the solution inside a function's body makes the function the answer; what a given line
    # binds after it derives from the answer (observed), before it is an input
    assert plan["ex2_tests"] == {"observed": ["fix", "fixed"], "inputs": ["setup"]}


def test_an_answer_written_with_a_cell_magic_binds_nothing_and_later_cells_are_observed(
        tmp_path):
    # lessons 10 ex3 and 11 ex1: the answer is a %%writefile cell; a given cell runs the file
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [
        _cell('import os\nPROFILE = os.environ.get("COURSE_PROFILE", "full")\nSEED = 0',
              "parameters"),
        _cell("import subprocess\nimport sys\nSCRATCH = '.'"),
        nbformat.v4.new_markdown_cell("### Exercise 1: a script"),
        _cell("%%writefile {SCRATCH}/answer.py\n### BEGIN SOLUTION\nprint(2 + 2)\n"
              "### END SOLUTION", "solution"),
        _cell("run_output = subprocess.run([sys.executable, 'answer.py'], capture_output=True,"
              " text=True).stdout"),
        _cell("# points: 1\nassert run_output.strip() == '4'", "tests"),
    ]
    path = tmp_path / "10_magic.ipynb"
    nbformat.write(nb, path)
    plan = autograde.exercise_plan(grading.load_lesson(path))
    assert plan["ex1_tests"]["observed"] == ["run_output"]


def test_the_real_lessons_00_and_04_plans():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    plans = {n: autograde.exercise_plan(grading.load_lesson(
        os.path.join(root, "notebooks", n))) for n in ("00_setup_and_hardware.ipynb",
                                                       "04_jax.ipynb")}
    assert plans["00_setup_and_hardware.ipynb"]["ex2_tests"] == {
        "observed": ["tf_over_jax"], "inputs": ["imports"]}
    assert plans["04_jax.ipynb"]["ex2_tests"]["observed"] == ["bad_layer_found",
                                                             "find_transposed"]
    assert "square_weights" in plans["04_jax.ipynb"]["ex2_tests"]["inputs"]


def test_only_functions_are_recorded_models_stay_objects():
    import functools

    class Model:  # callable, with an API the tests use: not replaced by a recorder
        def __call__(self, x):
            return x

        def predict(self, x):
            return x

    def plain(x):
        return x

    @functools.wraps(plain)
    def jitted(x):  # what jax.jit and functools.wraps leave: a __wrapped__ function
        return x

    model = Model()
    space = {"model": model, "plain": plain, "jitted": jitted, "part": functools.partial(
        plain, 1), "kind": Model}
    recorder = observe.Recorder(space, list(space))
    assert set(recorder.saved) == {"plain", "jitted", "part"}
    assert space["model"] is model and space["kind"] is Model
    payload, _ = observe.observe(space, list(space), recorder)
    assert payload["values"]["model"] == {"t": "opaque", "type": "test_grading_observe.Model"}
    assert payload["values"]["plain"] == {"t": "callable"}
    assert "not data (" in observe.describe(payload["values"]["model"])


def test_wrapped_functions_are_recorded_through_a_proxy_that_keeps_their_api():
    """A jax.jit or tf.function answer: its calls are recorded, and a tests cell graded in
    the student's own kernel still reaches its attributes and its type; a reference that is
    such an object makes its question not replayable (its tests may use more than calls)."""

    class Compiled:  # stands for tf.function's Function
        def __init__(self, fn):
            self.__wrapped__ = fn
            self.traces = 1

        def __call__(self, x):
            return self.__wrapped__(x) * 10

        def tracing_count(self):
            return self.traces

    compiled = Compiled(lambda x: x + 1)
    space = {"predict": compiled}
    recorder = observe.Recorder(space, ["predict"])
    proxy = space["predict"]
    assert isinstance(proxy, Compiled) and proxy.tracing_count() == 1
    assert proxy(1) == 20
    assert [c["ok"] for c in recorder.calls["predict"]] == [{"t": "int", "v": "20"}]
    recorder.restore()
    assert space["predict"] is compiled
    assert not observe.plain_function(compiled) and observe.recordable(compiled)


def _reference(space, observed, inputs, tests, capsys):
    observe.reference_begin(space, observed)
    tests(space)
    observe.reference_end(space, observed, inputs)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(line.split(" ", 1)[1])


def test_a_reference_is_replayable_only_when_its_values_and_results_are_data(capsys):
    class Model:
        def __call__(self, x):
            return x

    def repair(module):  # works in place: returns None
        module.fixed = True

    def forward(x):
        return np.asarray(x) * 2

    def tests(space):
        space["repair"](space["model"])
        space["forward"](1)

    space = {"repair": repair, "forward": forward, "model": Model(), "data": np.ones(2),
             "spec": object(), "loss": 0.5}
    reply = _reference(space, ["forward", "loss"], ["data"], tests, capsys)
    assert reply == {"replayable": True, "why": ""}
    assert space["forward"] is forward  # the recorder was taken off again
    reply = _reference(space, ["repair"], ["data"], tests, capsys)
    assert not reply["replayable"] and "side effects" in reply["why"]
    reply = _reference(space, ["forward"], ["model"], tests, capsys)
    assert not reply["replayable"] and "`model`, an object" in reply["why"]
    reply = _reference(space, ["forward", "spec"], [], tests, capsys)
    assert not reply["replayable"] and "`spec` is not data" in reply["why"]


def test_a_student_value_of_none_is_bound_and_an_empty_text_table_is_unchanged(tmp_path,
                                                                             capsys):
    # lesson 12 in the sandbox has no records: `my_winner` is None and `records` an empty
    # table of text columns; the reference answers scored 0/2 twice (NameError; "your answer
    # changed `records`", an empty object column decoding as float64)
    records = pd.DataFrame({"lesson": pd.Series([], dtype=object),
                            "value": pd.Series([], dtype=object)})

    def tests(space):
        assert space["my_winner"] is None and space["records"].empty

    space = {"my_winner": None, "records": records}
    assert _reference(space, ["my_winner"], ["records"], tests, capsys)["replayable"]
    payload, arrays = observe.observe({"my_winner": None, "records": records.copy()},
                                      ["my_winner", "records"])
    observe.dump(tmp_path / "ex1_tests", payload, arrays)
    observe.dump(tmp_path / "before", *observe.observe({"records": records.copy()},
                                                       ["records"]))
    space.pop("my_winner")
    observe.replay_begin(space, tmp_path / "ex1_tests", tmp_path / "before", ["my_winner"],
                         ["records"])
    reply = json.loads(capsys.readouterr().out.strip().splitlines()[-1].split(" ", 1)[1])
    assert reply == {"ok": True, "why": ""}
    assert "my_winner" in space and space["my_winner"] is None
    assert space["records"]["lesson"].dtype == object
    tests(space)
    observe.replay_end(space)


# --------------------------------------------------------------------------- red team, session 22


def _record(space, name, calls):
    """Record ``calls`` (a function of the namespace) of ``space[name]``: (calls, arrays)."""
    recorder = observe.Recorder(space, [name])
    calls(space)
    recorder.restore()
    payload, arrays = observe.observe(space, [name], recorder)
    # through the files, as the trusted kernel reads them
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload, arrays = observe.parse(json.dumps({"format": observe.FORMAT, **payload}).encode(),
                                    buffer.getvalue())
    return payload["calls"][name], arrays


def test_a_replay_answers_only_the_calls_it_was_recorded_for():
    """The record of a call holds its arguments; the trusted kernel's call must match, so a
    wrong function cannot line its results up with other calls (calls the answer made itself
    from a thread while the tests ran, tests stopped early, another order)."""

    def wrong(n):  # right only for 1 (the visible test), wrong for the hidden 21
        return 2 if n == 1 else 0

    def tests_and_extra_call(space):
        space["double"](42)  # the answer's own call (a thread), before the tests' calls
        space["double"](1)

    record, arrays = _record({"double": wrong}, "double", tests_and_extra_call)
    assert record[0]["args"]["items"][0]["items"][0] == {"t": "int", "v": "42"}
    replay = observe.replay_function("double", record, arrays)
    with pytest.raises(observe.ReplayError, match="other arguments than in call 1"):
        replay(1)  # the trusted kernel's first call: double(1), not double(42)
    replay = observe.replay_function("double", record, arrays)
    assert replay(42) == 0 and replay(1) == 2  # the same calls replay
    replay = observe.replay_function("double", record, arrays)
    with pytest.raises(observe.ReplayError, match="other arguments"):
        replay(42, extra=True)  # keywords count too


def test_a_function_that_changes_its_argument_changes_it_in_the_replay_too():
    """The side-effect gap (lesson 04 ex2's hidden "must not modify its argument"): the
    replay repeats the student's change on the arguments it gets, so the check fails in the
    trusted kernel as it did in the student's; a function that leaves them alone passes, and
    replay_end puts everything back."""

    def fixing(params):  # repairs the broken layer in place, then reports it: wrong
        for i, layer in enumerate(params):
            if layer["kernel"].shape[0] == layer["kernel"].shape[1] and layer["bad"]:
                params[i] = {**layer, "kernel": layer["kernel"].T.copy(), "bad": False}
                return i
        return None

    def careful(params):
        return next((i for i, layer in enumerate(params) if layer["bad"]), None)

    def trial():
        return [{"kernel": np.ones((2, 3)), "bad": False},
                {"kernel": np.arange(4.0).reshape(2, 2), "bad": True}]

    def hidden_test(f):
        params = trial()
        assert f(params) == 1
        assert params[1]["bad"], "the function must not modify its argument"

    for function, passes in ((fixing, False), (careful, True)):
        record, arrays = _record({"f": function}, "f", lambda space: space["f"](trial()))
        assert ("after" in record[0]) is not passes
        undo: list = []
        replay = observe.replay_function("f", record, arrays, undo)
        if passes:
            hidden_test(replay)
        else:
            with pytest.raises(AssertionError, match="must not modify"):
                hidden_test(replay)
            assert len(undo) == 1

    # an array argument changed in place, and undone by replay_end
    def scale(x):
        x *= 2
        return float(x.sum())

    record, arrays = _record({"scale": scale}, "scale", lambda space: space["scale"](np.ones(3)))
    data = np.ones(3)
    space = {"data": data}
    observe._TRUSTED.update(reference={}, namespace=dict(space), undo=[])
    replay = observe.replay_function("scale", record, arrays, observe._TRUSTED["undo"])
    assert replay(data) == 6.0 and np.array_equal(data, [2, 2, 2])
    space["leftover"] = "bound by the verdict run"
    observe.replay_end(space)
    assert np.array_equal(data, np.ones(3)) and space == {"data": data}


def test_a_change_the_replay_cannot_repeat_fails_the_call():
    def grow(pair):  # a tuple cannot be changed in place; its list can, but not as a tuple
        pair[0].append(1)
        return 0

    record, arrays = _record({"grow": grow}, "grow", lambda space: space["grow"](([],)))
    replay = observe.replay_function("grow", record, arrays)
    with pytest.raises(observe.ReplayError, match="cannot repeat"):
        replay(([],))


def test_argument_records_have_a_budget_of_their_own():
    """An answer that fills the file's array store (a huge result) cannot make the later
    calls' arguments ``toobig`` (which would compare equal to anything alike)."""

    def huge(x):
        return np.zeros(10) if np.ndim(x) == 0 else 0

    space = {"huge": huge}
    recorder = observe.Recorder(space, ["huge"], observe.Encoder(max_bytes=100))
    space["huge"](1)
    space["huge"](np.ones(4))
    recorder.restore()
    first, second = recorder.calls["huge"]
    assert first["ok"]["t"] == "ndarray" and second["ok"] == {"t": "int", "v": "0"}
    assert not observe.is_data(second["args"])  # the store is full: its array is toobig
    # the record of that call then matches no real call
    replay = observe.replay_function("huge", [second], recorder.encoder.arrays)
    with pytest.raises(observe.ReplayError, match="other arguments"):
        replay(np.ones(4))
    # the same input passed again is stored once (a lesson's data set, call after call)
    space = {"huge": huge}
    recorder = observe.Recorder(space, ["huge"])
    data = np.arange(1000.0)
    for _ in range(5):
        space["huge"](data)
    assert len(recorder.encoder.arrays) == 1 and recorder.encoder.bytes == data.nbytes


def test_a_recorded_exception_whose_message_breaks_is_recorded_without_it():
    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("no")

    def answer():
        raise Broken()

    space = {"answer": answer}
    recorder = observe.Recorder(space, ["answer"])
    with pytest.raises(Broken):
        space["answer"]()
    assert recorder.calls["answer"][0]["raised"] == ["Broken", "", "Exception"]


def _executed(lesson, passed: dict, verdicts: dict | None):
    """A student's executed notebook (tests cells passed or failed per ``passed``) and a
    trusted run with ``verdicts`` (tests id -> metadata; None: no trusted run)."""
    student = copy_nb(lesson.nb)
    for cell in student.cells:
        gid = grading._grade_id(cell) or ""
        if gid in passed:
            cell.execution_count = 1
            cell.outputs = [] if passed[gid] else [nbformat.v4.new_output(
                "error", ename="AssertionError", evalue="", traceback=[])]
            cell.metadata["grading"] = {"checked": True, "completed": True}
    execution = autograde.Execution(nb=student, state=autograde.State.COMPLETED, message="",
                                    cell=None, seconds=0.0, refused=[])
    trusted = None
    if verdicts is not None:
        nb = copy_nb(lesson.nb)
        for cell in nb.cells:
            gid = grading._grade_id(cell) or ""
            if gid in verdicts:
                cell.metadata["trusted_check"] = verdicts[gid]
                cell.outputs = []
        trusted = autograde.Execution(nb=nb, state=autograde.State.KERNEL_DIED,
                                      message="the kernel died", cell=None, seconds=0.0,
                                      refused=[])
    return execution, trusted


def copy_nb(nb):
    return nbformat.from_dict(json.loads(json.dumps(nb)))


def test_a_question_the_trusted_check_did_not_decide_never_keeps_its_in_process_points():
    """Status `error` fallback: a trusted kernel that died (or observations the answer kept
    from the export) must not turn an in-process pass, which the answer may have disarmed,
    into points; a question the trusted check found not replayable keeps it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lesson = grading.load_lesson(os.path.join(root, "notebooks", "00_setup_and_hardware.ipynb"))
    plans = autograde.exercise_plan(lesson)
    options = autograde.Options()
    passed = {"ex1_tests": True, "ex2_tests": True, "ex3_tests": True}
    ran = {"replayable": True, "verdict": "ran", "why": "", "reason": ""}
    kept = {"replayable": False, "why": "not data", "verdict": None, "reason": ""}
    for verdicts in (None, {"ex1_tests": ran, "ex2_tests": kept}):
        execution, trusted = _executed(lesson, passed, verdicts)
        scores = {q.key: q for q in autograde.score(
            lesson, execution, stubs={}, options=options, trusted=trusted, plans=plans)}
        assert scores["ex3"].points == 0 and "not decided" in scores["ex3"].reason
        if verdicts is not None:
            assert scores["ex1"].points == 1 and scores["ex2"].points == 1
    # the default plans are the lesson's own
    execution, trusted = _executed(lesson, passed, {"ex1_tests": ran})
    assert [q.points for q in autograde.score(lesson, execution, stubs={}, options=options,
                                              trusted=trusted)] == [1, 0, 0]
    # the trusted check must reach every tests cell that ran, observations or not
    assert autograde.to_decide(execution, plans) == ["ex1_tests", "ex2_tests", "ex3_tests"]


def test_a_replayed_exception_is_caught_as_the_students_was():
    """An exception merely *named* like a built-in is not that built-in in the replay (a
    test expecting ValueError must not pass on it), and a student's subclass of a built-in
    still is one (an honest ``class BadInput(ValueError)``)."""
    lookalike = type("ValueError", (Exception,), {})
    subclass = type("BadInput", (ValueError,), {})

    def answer(kind):
        raise kind("bad input")

    def tests(space):
        for kind in (lookalike, subclass, ValueError):
            try:
                space["answer"](kind)
            except Exception:  # noqa: BLE001 - recorded
                pass

    record, arrays = _record({"answer": answer}, "answer", tests)
    assert [c["raised"][0::2] for c in record] == [["ValueError", "Exception"],
                                                   ["BadInput", "ValueError"],
                                                   ["ValueError", "ValueError"]]
    replay = observe.replay_function("answer", record, arrays)
    with pytest.raises(Exception) as raised:
        replay(lookalike)
    assert not isinstance(raised.value, ValueError)
    assert type(raised.value).__name__ == "ValueError"  # the name the student chose
    with pytest.raises(ValueError, match="bad input") as raised:
        replay(subclass)
    assert type(raised.value).__name__ == "BadInput"
    with pytest.raises(ValueError) as raised:
        replay(ValueError)
    assert type(raised.value) is ValueError


def test_an_array_referred_to_many_times_counts_as_often():
    """A forged value whose nodes all name one large array would be copied at each: over the
    byte limit it is refused, instead of taking the trusted kernel's memory."""
    arrays = {"a0": np.zeros(1000)}
    node = {"t": "list", "items": [{"t": "ndarray", "ref": "a0"}] * 3}
    assert len(observe.decode(node, arrays)) == 3
    with pytest.raises(observe.ObservationError, match="larger than the limit"):
        observe.decode(node, arrays, budget=[observe.MAX_NODES, 2 * 8000])


def test_the_feedback_says_which_questions_a_stopped_trusted_check_did_not_decide():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lesson = grading.load_lesson(os.path.join(root, "notebooks", "00_setup_and_hardware.ipynb"))
    ran = {"replayable": True, "verdict": "ran", "why": "", "reason": ""}
    execution, trusted = _executed(lesson, {"ex1_tests": True, "ex2_tests": True},
                                   {"ex1_tests": ran})
    notes = autograde.grading_paths(lesson, trusted)
    assert notes[0].endswith(": ex1") and notes[-1].startswith("not decided") \
        and notes[-1].endswith("ex2, ex3"), notes
