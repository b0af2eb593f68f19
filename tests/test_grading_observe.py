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
    assert len(record) == 4 and record[2] == {"raised": ["ValueError", "negative"]}
    assert len(record[3]["raised"][0]) <= 40 and len(record[3]["raised"][1]) <= 300
    replay = observe.replay_function("answer", record, arrays)
    assert np.array_equal(replay(0), np.arange(3)) and np.array_equal(replay(0), np.arange(4))
    with pytest.raises(ValueError, match="negative"):
        replay(0)
    with pytest.raises(Exception) as raised:
        replay(0)
    assert type(raised.value).__name__.startswith("SecretLeak")
    with pytest.raises(observe.ReplayError, match="called more often"):
        replay(0)


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
    assert recorder.calls["predict"] == [{"ok": {"t": "int", "v": "20"}}]
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
