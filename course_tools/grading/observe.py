"""Observations: the values a graded kernel hands to the trusted check, as data (issue 16).

The trusted check (:mod:`course_tools.grading.worker`, ``trusted`` jobs) decides a question
in a kernel where no student code ever runs. The student's kernel only *exports* what the
question's tests read of the answer: the values of the answer's variables and, for the
answer's functions, the result of every call the tests made (recorded in order, encoded at
call time). This module is that format. It is sent as source text into both kernels (the
sandbox hides ``course_tools``), so it uses the standard library at import and NumPy only
inside functions.

Encoding (:func:`encode`): a typed tree of JSON nodes plus the arrays it refers to
(``{"a0": ndarray, ...}``, written as an uncompressed ``.npz``). Only *exact* types are data:

- ``None``, ``bool``, ``int`` (not a subclass: an always-equal ``int`` subclass is no number),
  ``float`` (``float.hex``: NaN, infinities and every bit kept), ``str``;
- ``list``, ``tuple``, ``dict`` with ``str`` or ``int`` keys (order kept), ``set`` and
  ``frozenset`` (of hashable data);
- NumPy arrays and scalars of boolean, integer, float or complex dtype;
- JAX, PyTorch and TensorFlow arrays, stored as their NumPy value with the framework's tag and
  rebuilt as that framework's array by :func:`decode` when the framework is imported there;
- pandas ``DataFrame`` and ``Series`` (columns, index, values);
- anything else is ``{"t": "opaque", "type": NAME}`` (a Keras model, an ``nn.Module``, a
  function): not data, so a question whose reference answer has such a value is not
  replayable and stays graded in the student's kernel.

Reading (:func:`load`) trusts nothing in the files: regular files with one link only, size
caps, JSON without NaN constants or duplicate keys, ``np.load(allow_pickle=False)`` on an
archive whose members are stored, not compressed (no zip bombs), every node checked by
:func:`decode`. Errors raise :class:`ObservationError` with a message for the feedback.

Calls (:class:`Recorder`, :func:`replay_function`): each recorded call keeps its result or
exception (cut name and message, and the nearest built-in exception class it is one of),
its arguments as it got them and, when it changed them, as it left them. A replayed call
must get the same arguments (else ``ReplayError``) and repeats the change in place, so the
order and number of the tests' calls, the inputs they pass and what a function does to its
arguments are checked in the trusted kernel too. The observations are the student kernel's
*claims*: an answer that takes over that kernel's export can claim any values (the
expected ones included, if it can compute them); the trusted check then guarantees that
the instructor's tests accept those values, not that the student's code produced them.
"""

from __future__ import annotations

import builtins
import functools
import io
import json
import os
import stat
import sys
from typing import Any

FORMAT = 1
MAX_JSON_BYTES = 16 * 2**20
MAX_ARRAY_BYTES = 256 * 2**20
MAX_NODES = 200_000
MAX_DEPTH = 40
MAX_STR = 2**20
MAX_INT_DIGITS = 4000
MAX_ARGS_BYTES = 64 * 2**20  # the arguments of one recorded call, kept to be compared
MAX_ARGS_NODES = 20_000  # beyond: "toobig" alike in both kernels (JSON stays small)
ARRAY_KINDS = "biufc"
FRAMEWORKS = ("jax", "torch", "tensorflow")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


class ObservationError(ValueError):
    """An observation file or node that is not valid data (the message says which)."""


def cut_name(name, limit: int = 60) -> str:
    """``name`` (a type or exception name chosen by a student) as at most ``limit``
    characters of letters, digits, ``_`` and ``.``; "object" when nothing is left."""
    text = "".join(ch for ch in str(name)[: limit * 4] if ch in _NAME_CHARS)[:limit]
    return text or "object"


def _type_name(value) -> str:
    kind = type(value)
    top = str(getattr(kind, "__module__", "") or "").split(".")[0]
    return cut_name(f"{top}.{getattr(kind, '__name__', '')}".lstrip("."))


def _framework(value):
    """``(tag, ndarray)`` for a JAX, PyTorch or TensorFlow array, else None."""
    module = (getattr(type(value), "__module__", "") or "").split(".")[0]
    try:
        import numpy as np

        if module in ("jax", "jaxlib") and "jax" in sys.modules and isinstance(
                value, sys.modules["jax"].Array):
            return "jax", np.asarray(value)
        if module == "torch" and "torch" in sys.modules and isinstance(
                value, sys.modules["torch"].Tensor):
            return "torch", value.detach().cpu().numpy()
        if module == "tensorflow" and "tensorflow" in sys.modules and isinstance(
                value, sys.modules["tensorflow"].Tensor):
            return "tensorflow", np.asarray(value.numpy())
    except Exception:  # noqa: BLE001 - key arrays, bfloat16, tracers...: not data
        return None
    return None


class Encoder:
    """Encodes values into one shared array store (``self.arrays``), so that one ``.npz``
    holds the arrays of every value and call of an exercise. Never raises for a value:
    what is not data becomes an ``opaque`` node; over the limits, ``{"t": "toobig"}``."""

    def __init__(self, max_bytes: int = MAX_ARRAY_BYTES, max_nodes: int = MAX_NODES):
        self.arrays: dict = {}
        self.bytes = 0
        self.nodes = 0
        self.max_bytes, self.max_nodes = max_bytes, max_nodes

    def _array(self, array, tag: str, framework: str | None = None) -> dict:
        import numpy as np

        array = np.array(array, copy=True)  # the value at call time, not a view
        if type(array) is not np.ndarray or array.dtype.kind not in ARRAY_KINDS \
                or array.dtype.hasobject:
            return {"t": "opaque", "type": cut_name(f"numpy.ndarray[{array.dtype}]")}
        if self.bytes + array.nbytes > self.max_bytes:
            return {"t": "toobig"}
        self.bytes += array.nbytes
        ref = f"a{len(self.arrays)}"
        self.arrays[ref] = array
        node = {"t": tag, "ref": ref}
        if framework:
            node["framework"] = framework
        return node

    def adopt(self, node, arrays: dict, depth: int = 0):
        """``node`` (made by another :class:`Encoder`, whose store is ``arrays``) with its
        arrays moved into this store (renamed; an array equal to one adopted before is stored
        once; one over this store's byte limit becomes ``{"t": "toobig"}``, which then matches
        no real argument). Raises nothing for nodes an encoder made."""
        if isinstance(node, list):
            return [self.adopt(item, arrays, depth + 1) for item in node]
        if not isinstance(node, dict) or depth > 3 * MAX_DEPTH:
            return node
        if "ref" in node:
            array = arrays.get(node["ref"])
            if array is None:
                return {"t": "toobig"}
            import hashlib

            key = (array.dtype.str, array.shape, hashlib.sha1(
                array.tobytes(), usedforsecurity=False).hexdigest())
            known: dict[tuple, str] | None = getattr(self, "_adopted", None)
            if known is None:
                known = {}
                self._adopted = known
            if key in known:  # the same input passed again: stored once
                return {**node, "ref": known[key]}
            if self.bytes + array.nbytes > self.max_bytes:
                return {"t": "toobig"}
            self.bytes += array.nbytes
            ref = f"a{len(self.arrays)}"
            self.arrays[ref] = array
            known[key] = ref
            return {**node, "ref": ref}
        return {key: self.adopt(value, arrays, depth + 1) for key, value in node.items()}

    def encode(self, value, depth: int = 0) -> dict:
        """The node of ``value`` (see the module docstring)."""
        self.nodes += 1
        if self.nodes > self.max_nodes or depth > MAX_DEPTH:
            return {"t": "toobig"}
        kind = type(value)
        if value is None:
            return {"t": "none"}
        if kind is bool:
            return {"t": "bool", "v": value}
        if kind is int:
            text = str(value) if abs(value) < 10 ** MAX_INT_DIGITS else None
            return {"t": "int", "v": text} if text else {"t": "toobig"}
        if kind is float:
            return {"t": "float", "v": value.hex()}
        if kind is str:
            return {"t": "str", "v": value} if len(value) <= MAX_STR else {"t": "toobig"}
        if kind in (list, tuple):
            return {"t": kind.__name__, "items": [self.encode(v, depth + 1) for v in value]}
        if kind in (set, frozenset):
            try:
                items = sorted(value, key=repr)  # a stable order for comparing
            except Exception:  # noqa: BLE001 - items whose repr fails: not data
                return {"t": "opaque", "type": kind.__name__}
            return {"t": kind.__name__, "items": [self.encode(v, depth + 1) for v in items]}
        if kind is dict:
            if not all(type(k) in (str, int) for k in value):
                return {"t": "opaque", "type": "dict"}
            return {"t": "dict", "items": [[self.encode(k, depth + 1), self.encode(v, depth + 1)]
                                           for k, v in value.items()]}
        module = (getattr(kind, "__module__", "") or "").split(".")[0]
        if module == "numpy" and "numpy" in sys.modules:
            np = sys.modules["numpy"]
            if kind is np.ndarray:
                return self._array(value, "ndarray")
            if isinstance(value, np.generic) and value.dtype.kind in ARRAY_KINDS:
                return self._array(np.asarray(value), "npscalar")
        if module == "pandas" and "pandas" in sys.modules:
            pd = sys.modules["pandas"]
            if kind in (pd.DataFrame, pd.Series):
                return self._pandas(value, kind is pd.DataFrame, depth)
        found = _framework(value)
        if found is not None:
            return self._array(found[1], "array", found[0])
        return {"t": "opaque", "type": _type_name(value)}

    def _column(self, column, depth: int) -> dict:
        values = column.to_numpy()
        if values.dtype.kind in ARRAY_KINDS:
            return self._array(values, "ndarray")
        return self.encode([_plain(v) for v in values.tolist()], depth + 1)

    def _pandas(self, value, frame: bool, depth: int) -> dict:
        index = self.encode([_plain(v) for v in value.index.tolist()], depth + 1)
        # the levels' names: a test may select by them (``xs(..., level="model")``)
        index_names = self.encode([_plain(n) for n in value.index.names], depth + 1)
        if frame:
            return {"t": "dataframe", "columns": self.encode(
                        [_plain(c) for c in value.columns.tolist()], depth + 1),
                    "column_names": self.encode([_plain(n) for n in value.columns.names],
                                                depth + 1),
                    "index": index, "index_names": index_names,
                    "data": [self._column(value.iloc[:, i], depth + 1)
                             for i in range(value.shape[1])]}
        return {"t": "series", "name": self.encode(_plain(value.name), depth + 1),
                "index": index, "index_names": index_names,
                "data": self._column(value, depth + 1)}


def _plain(value):
    """NumPy scalars in pandas' object columns and indexes as Python's own scalars."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def encode(value, encoder: Encoder | None = None) -> tuple[dict, dict]:
    """``(node, arrays)`` for ``value``; ``encoder`` shares an array store between values.
    Raises nothing."""
    encoder = encoder or Encoder()
    return encoder.encode(value), encoder.arrays


def is_data(node) -> bool:
    """Whether ``node`` (from :func:`encode`) holds only data: no ``opaque``, ``toobig``,
    ``missing`` or ``callable`` node anywhere (:func:`describe` finds none). Raises nothing."""
    return describe(node) == "data"


def describe(node) -> str:
    """The first reason ``node`` (from :func:`encode`) is not data, e.g. ``"not data
    (keras.src.models.Sequential)"``, or ``"data"`` when it holds only data. Raises nothing."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            kind = item.get("t")
            if kind == "opaque":
                return f"not data ({cut_name(item.get('type'), 40)})"
            if kind in ("toobig", "missing", "callable"):
                return {"toobig": "too large to export", "missing": "not defined",
                        "callable": "a function"}[kind]
            stack.extend(v for k, v in item.items() if k in ("items", "columns", "index",
                                                              "data", "name"))
    return "data"


# --------------------------------------------------------------------------- decoding


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ObservationError(what)


def decode(node, arrays: dict, *, frameworks: bool = True, depth: int = 0, budget=None):
    """The value of ``node``, with arrays from ``arrays`` (name -> ndarray). Framework
    arrays are rebuilt as that framework's array when ``frameworks`` and the framework is
    imported in this process, else returned as NumPy arrays.

    Raises:
        ObservationError: a node that is not one of :func:`encode`'s (unknown type, wrong
            fields, an ``int`` that is not digits, a missing array, too deep or too many
            nodes, more than :data:`MAX_ARRAY_BYTES` of arrays in one value, counting an
            array as often as it is referred to); ``opaque``, ``toobig``, ``missing`` and
            ``callable`` nodes too (they are not values).
    """
    import numpy as np

    budget = budget if budget is not None else [MAX_NODES, MAX_ARRAY_BYTES]
    budget[0] -= 1
    _check(budget[0] >= 0 and depth <= MAX_DEPTH, "too many or too deeply nested values")
    _check(type(node) is dict and type(node.get("t")) is str, "a value that is not a node")
    kind = node["t"]
    if kind == "none":
        return None
    if kind == "bool":
        _check(type(node.get("v")) is bool, "a bool that is not true or false")
        return node["v"]
    if kind == "int":
        text = node.get("v")
        _check(type(text) is str and 0 < len(text) <= MAX_INT_DIGITS + 1
               and text.lstrip("-").isdigit() and text.lstrip("-").isascii(), "a bad int")
        return int(text)
    if kind == "float":
        _check(type(node.get("v")) is str and len(node["v"]) <= 40, "a bad float")
        try:
            return float.fromhex(node["v"])
        except (ValueError, OverflowError):
            raise ObservationError("a bad float") from None
    if kind == "str":
        _check(type(node.get("v")) is str and len(node["v"]) <= MAX_STR, "a bad str")
        return node["v"]
    if kind in ("list", "tuple"):
        _check(type(node.get("items")) is list, f"a {kind} without items")
        items = [decode(v, arrays, frameworks=frameworks, depth=depth + 1, budget=budget)
                 for v in node["items"]]
        return items if kind == "list" else tuple(items)
    if kind in ("set", "frozenset"):
        _check(type(node.get("items")) is list, f"a {kind} without items")
        items = [decode(v, arrays, frameworks=frameworks, depth=depth + 1, budget=budget)
                 for v in node["items"]]
        try:
            return set(items) if kind == "set" else frozenset(items)
        except TypeError:
            raise ObservationError(f"a {kind} of unhashable items") from None
    if kind == "dict":
        _check(type(node.get("items")) is list, "a dict without items")
        out = {}
        for pair in node["items"]:
            _check(type(pair) is list and len(pair) == 2, "a dict item that is not a pair")
            key = decode(pair[0], arrays, frameworks=frameworks, depth=depth + 1, budget=budget)
            _check(type(key) in (str, int) and key not in out, "a bad or repeated dict key")
            out[key] = decode(pair[1], arrays, frameworks=frameworks, depth=depth + 1,
                              budget=budget)
        return out
    if kind in ("ndarray", "npscalar", "array"):
        ref = node.get("ref")
        _check(type(ref) is str and ref in arrays, "an array that is not in the file")
        array = arrays[ref]
        _check(type(array) is np.ndarray and array.dtype.kind in ARRAY_KINDS
               and not array.dtype.hasobject, "an array of a type that is not data")
        budget[1] -= array.nbytes  # one array referred to many times is copied as often
        _check(budget[1] >= 0, "arrays larger than the limit")
        array = array.copy()  # every decode gives a fresh value: tests may change it
        if kind == "npscalar":
            _check(array.ndim == 0, "a NumPy scalar that is not 0-dimensional")
            return array[()]
        if kind == "array":
            tag = node.get("framework")
            _check(tag in FRAMEWORKS, "an array of an unknown framework")
            return _rebuild(tag, array) if frameworks else array
        return array
    if kind in ("dataframe", "series"):
        import pandas as pd

        index = decode(node.get("index"), arrays, frameworks=False, depth=depth + 1,
                       budget=budget)
        _check(type(index) is list, "a pandas index that is not a list")
        index = _pandas_index(pd, index, _decode_names(node, "index_names", arrays, depth,
                                                       budget))
        if kind == "series":
            data = _decode_column(node.get("data"), arrays, depth, budget)
            _check(len(data) == len(index), "a Series whose index has another length")
            name = decode(node.get("name"), arrays, frameworks=False, depth=depth + 1,
                          budget=budget)
            return pd.Series(_object_column(data), index=index, name=name)
        columns = decode(node.get("columns"), arrays, frameworks=False, depth=depth + 1,
                         budget=budget)
        _check(type(columns) is list and type(node.get("data")) is list
               and len(node["data"]) == len(columns), "a DataFrame with bad columns")
        data = [_decode_column(c, arrays, depth, budget) for c in node["data"]]
        _check(all(len(d) == len(index) for d in data), "a DataFrame with ragged columns")
        frame = pd.DataFrame({i: _object_column(d) for i, d in enumerate(data)}, index=index)
        if columns:
            frame.columns = _pandas_index(pd, columns, _decode_names(
                node, "column_names", arrays, depth, budget))
        return frame
    if kind in ("opaque", "toobig", "missing", "callable"):
        raise ObservationError(f"a value that is {describe(node)}")
    raise ObservationError("a node of an unknown type")


def _object_column(data):
    """A decoded column as pandas should build it: an *empty* list (an empty text or
    ``object`` column) as an empty ``object`` array, because pandas would make it float64 and
    it would no longer equal the column it came from; anything else as it is (pandas infers
    the dtype of a list of strings as it did in the student's kernel)."""
    if type(data) is list and not data:
        import numpy as np

        return np.empty(0, dtype=object)
    return data


def _decode_names(node, key, arrays, depth, budget):
    """The level names stored under ``key`` (a list of ``str``, ``int`` or ``None``), or
    None when the node has none (observations written before names were kept)."""
    if key not in node:
        return None
    names = decode(node[key], arrays, frameworks=False, depth=depth + 1, budget=budget)
    _check(type(names) is list and all(n is None or type(n) in (str, int) for n in names),
           "pandas level names that are not a list of names")
    return names


def _pandas_index(pd, labels: list, names):
    """``pd.Index(labels)`` (a MultiIndex when the labels are tuples) with ``names``."""
    index = pd.Index(labels)
    if names is not None:
        _check(len(names) == index.nlevels, "pandas level names that do not fit the index")
        index = index.set_names(names)
    return index


def _decode_column(node, arrays, depth, budget):
    value = decode(node, arrays, frameworks=False, depth=depth + 1, budget=budget)
    _check(type(value) is list or getattr(value, "ndim", None) == 1,
           "a pandas column that is not one-dimensional")
    return value


def _rebuild(tag: str, array):
    """``array`` as a ``tag`` framework array when that framework is imported here."""
    module = sys.modules.get(tag)
    if module is None:
        return array
    if tag == "jax":
        return module.numpy.asarray(array)
    if tag == "torch":
        return module.from_numpy(array)
    return module.convert_to_tensor(array)


def same(a, arrays_a: dict, b, arrays_b: dict) -> bool:
    """Whether nodes ``a`` and ``b`` hold the same data: same structure, types and dtypes,
    equal arrays (NaN equal to NaN; floats within ``rtol`` 1e-9, for BLAS summation orders).
    Raises nothing."""
    import numpy as np

    try:
        if type(a) is not type(b):
            return False
        if type(a) is list:
            return len(a) == len(b) and all(same(x, arrays_a, y, arrays_b)
                                            for x, y in zip(a, b, strict=True))
        if type(a) is not dict:
            return a == b
        if set(a) != set(b):
            return False
        for key in a:
            if key == "ref":
                x, y = arrays_a.get(a[key]), arrays_b.get(b[key])
                if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)) \
                        or x.dtype != y.dtype or x.shape != y.shape:
                    return False
                if x.dtype.kind in "fc":
                    if not np.allclose(x, y, rtol=1e-9, atol=0, equal_nan=True):
                        return False
                elif not np.array_equal(x, y):
                    return False
            elif not same(a[key], arrays_a, b[key], arrays_b):
                return False
        return True
    except Exception:  # noqa: BLE001 - anything odd is "not the same"
        return False


# --------------------------------------------------------------------------- files


def dump(path_stem, payload: dict, arrays: dict) -> None:
    """Write ``payload`` to ``STEM.json`` and ``arrays`` to ``STEM.npz`` (uncompressed)."""
    import numpy as np

    stem = str(path_stem)
    with open(stem + ".npz", "wb") as handle:
        np.savez(handle, **arrays)
    with open(stem + ".json", "w", encoding="utf-8") as handle:
        json.dump({"format": FORMAT, **payload}, handle, allow_nan=False)


def read_regular(path, limit: int, *, folder_too: bool = False) -> bytes:
    """The bytes of ``path``, only a regular file with one link of at most ``limit`` bytes,
    opened without following a symlink (``folder_too``: nor a symlink as its folder, for
    folders the kernel can write).

    Raises:
        ObservationError: missing, a link, not a regular file, or larger than ``limit``.
    """
    folder_fd = None
    try:
        if folder_too:
            folder_fd = os.open(os.path.dirname(os.fspath(path)) or ".",
                                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            fd = os.open(os.path.basename(os.fspath(path)),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ObservationError(f"cannot be opened ({exc.strerror})") from None
    finally:
        if folder_fd is not None:
            os.close(folder_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise ObservationError("not a regular file of its own")
        if info.st_size > limit:
            raise ObservationError(f"larger than {limit} bytes")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise ObservationError(f"larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


def _no_constants(name):
    raise ObservationError(f"a JSON constant {name[:10]} (not data)")


def _pairs(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ObservationError("repeated JSON keys")
    return dict(pairs)


def parse(json_bytes: bytes, npz_bytes: bytes, *, max_array_bytes: int = MAX_ARRAY_BYTES):
    """``(payload, arrays)`` from the bytes of an observation's ``.json`` and ``.npz``.

    Raises:
        ObservationError: not UTF-8 JSON of this format, NaN constants, repeated keys, too
            deep; an archive that is not a zip of stored ``.npy`` members, members over the
            limit, arrays that need pickle.
    """
    import zipfile

    import numpy as np

    try:
        payload = json.loads(json_bytes.decode("utf-8"), parse_constant=_no_constants,
                             object_pairs_hook=_pairs)
    except ObservationError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ObservationError(f"not valid JSON ({type(exc).__name__})") from None
    _check(type(payload) is dict and payload.get("format") == FORMAT,
           "not an observation file of this format")
    arrays = {}
    try:
        archive = zipfile.ZipFile(io.BytesIO(npz_bytes))
        members = archive.infolist()
        _check(len(members) <= MAX_NODES, "too many arrays")
        total = 0
        for info in members:
            _check(info.compress_type == zipfile.ZIP_STORED,
                   "a compressed array (only stored members are read)")
            _check(info.filename.endswith(".npy") and info.filename[:-4].isidentifier(),
                   "an archive member that is not an array")
            total += info.file_size
            _check(total <= max_array_bytes, "arrays larger than the limit")
        for info in members:
            with archive.open(info) as member:
                array = np.load(io.BytesIO(member.read()), allow_pickle=False)
            _check(type(array) is np.ndarray and array.dtype.kind in ARRAY_KINDS,
                   "an array of a type that is not data")
            arrays[info.filename[:-4]] = array
    except ObservationError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken archive is one error
        raise ObservationError(f"not a valid array archive ({type(exc).__name__})") from None
    return payload, arrays


def load(path_stem, *, max_json_bytes: int = MAX_JSON_BYTES,
         max_array_bytes: int = MAX_ARRAY_BYTES):
    """:func:`parse` of ``STEM.json`` and ``STEM.npz``, each read by :func:`read_regular`.

    Raises:
        ObservationError: see :func:`read_regular` and :func:`parse`.
    """
    stem = str(path_stem)
    return parse(read_regular(stem + ".json", max_json_bytes),
                 read_regular(stem + ".npz", max_array_bytes + 2**20),
                 max_array_bytes=max_array_bytes)


# --------------------------------------------------------------------------- in the kernels

BUILTIN_ERRORS = frozenset(name for name, obj in vars(builtins).items()
                           if isinstance(obj, type) and issubclass(obj, Exception))


def plain_function(value) -> bool:
    """Whether ``value`` is a Python or built-in function, a bound method or a
    ``functools.partial``: all a test can do with it is call it, so a replay of its calls
    can stand for it. Raises nothing."""
    import types

    return isinstance(value, types.FunctionType | types.BuiltinFunctionType
                      | types.MethodType | functools.partial)


def recordable(value) -> bool:
    """Whether the calls of ``value`` are recorded: a :func:`plain_function`, or a wrapper
    of a function (``__wrapped__``: ``jax.jit``, ``tf.function``, ``functools.wraps``),
    recorded through a proxy that keeps its attributes and ``isinstance`` (so that a tests
    cell graded in the student's kernel still sees it whole). Objects that are merely
    callable (a Keras model, an ``nn.Module``) are not recorded: they are encoded
    (``opaque``) and their question stays in-process. Raises nothing."""
    import types

    if plain_function(value):
        return True
    try:
        inner = getattr(value, "__wrapped__", None)
    except Exception:  # noqa: BLE001 - an object whose attributes raise: not a function
        return False
    return not isinstance(value, type) and callable(value) and isinstance(
        inner, types.FunctionType | types.BuiltinFunctionType | types.MethodType)


def call_arguments(args, kwargs) -> tuple[dict, dict]:
    """``(node, arrays)`` of one call's arguments: a ``list`` node ``[args, kwargs]`` made by
    an :class:`Encoder` of its own (at most :data:`MAX_ARGS_BYTES` of arrays and
    :data:`MAX_ARGS_NODES` nodes), so that what earlier calls stored cannot make a later
    call's arguments ``toobig``; arguments over those limits are ``toobig`` alike in both
    kernels (not compared). Raises nothing."""
    encoder = Encoder(max_bytes=MAX_ARGS_BYTES, max_nodes=MAX_ARGS_NODES)
    return encoder.encode([list(args), dict(kwargs)]), encoder.arrays


def builtin_base(exc) -> str:
    """The name of the nearest built-in exception class ``exc`` is an instance of
    (``ValueError`` for ``class BadInput(ValueError)``; ``Exception`` for a class merely
    *named* ``ValueError``, or for one that is no ``Exception``). Raises nothing."""
    for kind in getattr(type(exc), "__mro__", ()):
        name = getattr(kind, "__name__", "")
        if name in BUILTIN_ERRORS and getattr(builtins, name, None) is kind:
            return name
    return "Exception"


def _message(exc) -> str:
    """At most 300 characters of ``str(exc)``; a message whose ``__str__`` fails is empty."""
    try:
        return str(exc)[:300]
    except Exception:  # noqa: BLE001 - a student's exception may break its own __str__
        return ""


class Recorder:
    """Wraps the callables among ``names`` of ``namespace`` (a kernel's ``user_ns``) so that
    each outermost call's result, or its exception (cut type name and message), is appended
    to ``self.calls[name]``, encoded at call time, with the call's arguments as it got them
    (``args``, :func:`call_arguments`) and, when the call changed them, as it left them
    (``after``): ``{"ok"|"raised": ..., "args": ..., ["after": ...]}``. Calls made from inside a recorded call (a
    recursive answer, one answer function calling another) are not recorded: the replay of
    the outer call stands for them. :meth:`restore` puts the originals back."""

    def __init__(self, namespace: dict, names, encoder: Encoder | None = None):
        self.namespace = namespace
        self.encoder = encoder or Encoder()
        self.calls: dict = {}
        self.saved: dict = {}
        self.depth = [0]
        for name in names:
            value = namespace.get(name)
            if recordable(value):
                self.saved[name] = value
                self.calls[name] = []
                namespace[name] = self._wrap(name, value)

    def _wrap(self, name, function):
        if not plain_function(function):
            return _Proxy(function, self._wrap_plain(name, function))
        return self._wrap_plain(name, function)

    def _wrap_plain(self, name, function):
        calls, depth, encoder = self.calls[name], self.depth, self.encoder

        def recorded(*args, **kwargs):
            if depth[0]:
                return function(*args, **kwargs)
            depth[0] += 1
            raised = None
            try:
                before = call_arguments(args, kwargs)
                try:
                    result = function(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - recorded, then raised again
                    raised = exc
                    entry = {"raised": [cut_name(type(exc).__name__, 40), _message(exc),
                                        builtin_base(exc)]}
                else:
                    entry = {"ok": encoder.encode(result)}
                entry["args"] = encoder.adopt(*before)
                after = call_arguments(args, kwargs)
                if not same(before[0], before[1], after[0], after[1]):
                    entry["after"] = encoder.adopt(*after)  # the call changed its arguments
                calls.append(entry)
            finally:
                depth[0] -= 1
            if raised is not None:
                raise raised
            return result

        try:
            functools.update_wrapper(recorded, function)  # name, doc, __wrapped__ ...
        except Exception:  # noqa: BLE001 - a callable without the usual attributes
            recorded.__wrapped__ = function
        return recorded

    def restore(self) -> None:
        """Put the original callables back (only where the wrapper is still bound)."""
        for name, function in self.saved.items():
            current = self.namespace.get(name)
            if getattr(current, "__wrapped__", None) is function:
                self.namespace[name] = function


class _Proxy:
    """A recorded wrapper function object: calls go through the recorder, every attribute
    (``experimental_get_tracing_count``, ``lower``...) and ``isinstance`` to the object."""

    def __init__(self, target, call):
        object.__setattr__(self, "__wrapped__", target)
        object.__setattr__(self, "_course_call", call)

    def __call__(self, *args, **kwargs):
        return object.__getattribute__(self, "_course_call")(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "__wrapped__"), name)

    @property  # type: ignore[misc]  # isinstance() sees the wrapped function's class
    def __class__(self):
        return type(object.__getattribute__(self, "__wrapped__"))

    def __repr__(self):
        return repr(object.__getattribute__(self, "__wrapped__"))


def observe(namespace: dict, names, recorder: Recorder | None = None) -> tuple[dict, dict]:
    """``(payload, arrays)``: per name of ``names``, its node in ``namespace`` (``missing``
    when unbound; ``callable`` for a function, whose calls are in ``payload["calls"]`` when
    ``recorder`` recorded it). Raises nothing."""
    encoder = recorder.encoder if recorder is not None else Encoder()
    values = {}
    for name in names:
        if name not in namespace:
            values[name] = {"t": "missing"}
            continue
        value = namespace[name]
        if recorder is not None and name in recorder.saved:
            values[name] = {"t": "callable"}
        else:
            values[name] = encoder.encode(value)
    calls = dict(recorder.calls) if recorder is not None else {}
    return {"values": values, "calls": calls}, encoder.arrays


def export(namespace: dict, stem, names, recorder: Recorder | None = None) -> None:
    """:func:`observe` written to ``STEM.json`` / ``STEM.npz`` (folders made)."""
    folder = os.path.dirname(str(stem))
    if folder:
        os.makedirs(folder, exist_ok=True)
    payload, arrays = observe(namespace, names, recorder)
    dump(stem, payload, arrays)


class ReplayError(Exception):
    """A replayed function called more often than in the student's notebook, with other
    arguments than there, or whose change of its arguments cannot be repeated."""


def _raise_like(name: str, message: str, base: str = "Exception"):
    """An exception named ``name`` (cut) that is an instance of the built-in ``base``: that
    built-in itself when the names agree, else a new class of that name derived from it, so
    that ``except ValueError`` catches it only when the student's exception was one."""
    name = cut_name(name, 40).rsplit(".", 1)[-1] or "Exception"
    kind = getattr(builtins, base) if base in BUILTIN_ERRORS else Exception
    if name == kind.__name__ or not name.isidentifier():
        return kind(message)
    return type(name, (kind,), {})(message)


def replay_function(name: str, calls, arrays: dict, undo: list | None = None):
    """A function that returns the recorded results ``calls`` (from :class:`Recorder`) one
    per call, in order: a fresh decoded value each time, or the recorded exception raised
    again (:func:`_raise_like`: of the recorded name, an instance of the nearest built-in
    exception class the student's was one of).

    Each call must get the arguments the student's function got in the same call of the
    student's notebook (:func:`same` on :func:`call_arguments`): the record answers for
    those arguments only, so tests that call in another order, with other inputs, or that
    the answer's own calls (a thread) shifted, fail. When the student's function changed
    its arguments (the record's ``after``), the replay makes the same change to the
    arguments it got (lists, dicts, sets and NumPy arrays, in place), so that a test that
    checks "must not modify its argument" sees it; ``undo`` (a list) gets ``(object,
    copy of its value before)`` for each object changed, for :func:`replay_end`.

    Raises (when called): ReplayError after the record runs out, for other arguments, or
    for a change of an argument that cannot be repeated in place; ObservationError for a
    record that is not data.
    """
    _check(type(calls) is list, f"the calls of `{name}` are not a list")
    position = [0]

    def replayed(*args, **kwargs):
        if position[0] >= len(calls):
            raise ReplayError(f"`{name}` was called more often than in your notebook (the "
                              "tests stopped earlier there, or your code changed them)")
        entry = calls[position[0]]
        position[0] += 1
        _check(type(entry) is dict and "args" in entry and ("ok" in entry) != (
            "raised" in entry) and set(entry) <= {"ok", "raised", "args", "after"},
            f"a bad call record of `{name}`")
        mine, mine_arrays = call_arguments(args, kwargs)
        if not same(entry["args"], arrays, mine, mine_arrays):
            raise ReplayError(f"`{name}` was called with other arguments than in call "
                              f"{position[0]} of your notebook (your code changed what the "
                              "tests pass it, or the order of their calls)")
        if "after" in entry:
            _repeat_changes(name, args, kwargs, entry["args"], entry["after"], arrays, undo)
        if "raised" in entry:
            raised = entry["raised"]
            _check(type(raised) is list and len(raised) in (2, 3)
                   and all(type(x) is str for x in raised), f"a bad call record of `{name}`")
            raise _raise_like(raised[0], raised[1][:300], *raised[2:3])
        return decode(entry["ok"], arrays)

    replayed.__name__ = name
    replayed.__qualname__ = name
    return replayed


def _split_arguments(node, name: str) -> tuple[list, list]:
    """The positional and keyword ``[key, value]`` nodes of a :func:`call_arguments` node."""
    _check(type(node) is dict and node.get("t") == "list" and type(node.get("items")) is list
           and len(node["items"]) == 2, f"a bad call record of `{name}`")
    positional, keywords = node["items"]
    _check(type(positional) is dict and positional.get("t") == "list"
           and type(positional.get("items")) is list and type(keywords) is dict
           and keywords.get("t") == "dict" and type(keywords.get("items")) is list,
           f"a bad call record of `{name}`")
    return positional["items"], keywords["items"]


def _repeat_changes(name, args, kwargs, before, after, arrays: dict, undo) -> None:
    """Change ``args``/``kwargs`` in place as the student's call changed its own (the
    arguments whose ``before`` and ``after`` nodes differ). Raises ReplayError when an
    argument cannot take its new value in place (a tuple, a framework tensor...)."""
    import copy

    old_args, old_keys = _split_arguments(before, name)
    new_args, new_keys = _split_arguments(after, name)
    _check(len(old_args) == len(new_args) == len(args) and len(old_keys) == len(new_keys)
           == len(kwargs), f"a bad call record of `{name}`")
    targets = list(args) + [kwargs.get(pair[0].get("v")) if type(pair) is list and len(pair)
                            == 2 and type(pair[0]) is dict else None for pair in new_keys]
    olds = list(old_args) + [p[1] if type(p) is list and len(p) == 2 else None
                             for p in old_keys]
    news = list(new_args) + [p[1] if type(p) is list and len(p) == 2 else None
                             for p in new_keys]
    for target, old, new in zip(targets, olds, news, strict=True):
        if same(old, arrays, new, arrays):
            continue
        value = decode(new, arrays)
        if not _assignable(target, value):
            raise ReplayError(f"`{name}` changed its argument (a {cut_name(type(target).__name__, 40)}) "
                              "in a way the trusted check cannot repeat: return a new value "
                              "instead of changing the one you were given")
        if undo is not None:
            undo.append((target, copy.deepcopy(target)))
        _assign_into(target, value)


def _assignable(target, value) -> bool:
    """Whether :func:`_assign_into` can give ``target`` the value ``value`` in place."""
    import numpy as np

    if type(target) is list and type(value) is list:
        return True
    if type(target) is dict and type(value) is dict:
        return True
    if type(target) is set and type(value) is set:
        return True
    return (type(target) is np.ndarray and type(value) is np.ndarray
            and target.shape == value.shape and target.flags.writeable)


def _assign_into(target, value) -> None:
    """Give the mutable ``target`` the value ``value`` in place (:func:`_assignable`), item
    by item, so that what else refers to it, or to its items, sees the change."""
    import numpy as np

    if type(target) is np.ndarray:
        np.copyto(target, value, casting="unsafe")
    elif type(target) is set:
        target.clear()
        target.update(value)
    elif type(target) is list:
        if len(target) != len(value):
            target[:] = value
            return
        for i, item in enumerate(value):
            if target[i] is not item and _assignable(target[i], item):
                _assign_into(target[i], item)
            else:
                target[i] = item
    else:
        for key in [k for k in target if k not in value]:
            del target[key]
        for key, item in value.items():
            if key in target and _assignable(target[key], item):
                _assign_into(target[key], item)
            else:
                target[key] = item


# --------------------------------------------------------------------------- trusted kernel

_TRUSTED: dict = {}  # the trusted kernel's state between the worker's requests


def _reply(payload: dict) -> None:
    print("COURSE-TRUSTED " + json.dumps(payload, sort_keys=True), flush=True)


def reference_begin(namespace: dict, observed) -> None:
    """Trusted kernel, before the reference's own run of a tests cell: record the calls of
    the reference's callables among ``observed``."""
    _TRUSTED["recorder"] = Recorder(namespace, observed)


def reference_end(namespace: dict, observed, inputs) -> None:
    """Trusted kernel, after the reference's run: put the callables back, keep the
    reference's values of ``observed`` and ``inputs`` (put back after the replay), and reply
    ``{"replayable": bool, "why": str}``: replayable when every observed value and every
    recorded result of the reference is data (:func:`is_data`)."""
    recorder = _TRUSTED.pop("recorder")
    recorder.restore()
    _TRUSTED["reference"] = {name: namespace[name] for name in [*observed, *inputs]
                             if name in namespace}
    _TRUSTED["namespace"] = dict(namespace)  # every binding, put back by replay_end
    payload, _ = observe(namespace, observed, recorder)
    why = ""
    for name, calls in recorder.calls.items():
        if calls and all(call.get("ok") == {"t": "none"} for call in calls):
            why = (f"`{name}` returns None: it works through side effects (on its arguments), "
                   "which a replay cannot repeat")
    for name in [] if why else inputs:
        value = namespace.get(name)
        code = isinstance(value, type) or recordable(value) or type(value).__name__ == "module"
        if name in namespace and not code \
                and not is_data(Encoder(max_bytes=MAX_ARRAY_BYTES).encode(value)):
            why = (f"its tests use `{name}`, an object ({_type_name(value)}) that cannot be "
                   "compared with your notebook's, and may differ between two runs")
            break
    for name, node in [] if why else payload["values"].items():
        if name in recorder.saved and not plain_function(recorder.saved[name]):
            why = (f"`{name}` is {cut_name(_type_name(recorder.saved[name]), 40)}, not a plain "
                   "function: its tests may use more than its calls")
        elif node.get("t") == "callable" and name in recorder.calls:
            for call in recorder.calls[name]:
                if "ok" in call and not is_data(call["ok"]):
                    why = f"`{name}` returns a value that is {describe(call['ok'])}"
                    break
        elif not is_data(node):
            why = f"`{name}` is {describe(node)}"
        if why:
            break
    _reply({"replayable": not why, "why": why})


#: What :func:`replay_begin` binds for a name the student's notebook never bound (a value of
#: ``None`` is a value: lesson 12's ``my_winner`` is None when no framework has evidence).
_UNBOUND = object()


def replay_begin(namespace: dict, stem, before_stem, observed, inputs) -> None:
    """Trusted kernel, before the verdict run of a tests cell: bind each of ``observed`` to
    the student's value (``STEM.json``/``.npz``), each reference callable to a
    :func:`replay_function` of the student's recorded calls; bind the ``inputs`` recorded
    before any student code ran (``BEFORE_STEM``, when given and holding them) and check
    that the student's ``inputs`` equal the ones bound here. Replies ``{"ok": bool, "why":
    str}``; when not ok the verdict is that reason (nothing is bound)."""
    try:
        try:
            payload, arrays = load(stem)
        except ObservationError as exc:
            raise ObservationError(f"your notebook's values for these tests could not be "
                                   f"read: {exc}") from None
        values, calls = payload.get("values"), payload.get("calls")
        _check(type(values) is dict and type(calls) is dict, "no values or calls")
        bound: dict[str, Any] = {}
        for name in observed:
            node = values.get(name)
            reference = _TRUSTED["reference"].get(name)
            if node is None or node.get("t") == "missing":
                bound[name] = _UNBOUND  # the tests raise NameError
            elif plain_function(reference):
                if node.get("t") != "callable" or name not in calls:
                    raise ObservationError(f"`{name}` is not a function in your notebook")
                bound[name] = replay_function(name, calls[name], arrays,
                                              _TRUSTED.setdefault("undo", []))
            else:
                if not is_data(node):
                    raise ObservationError(f"`{name}` in your notebook is {describe(node)}")
                bound[name] = decode(node, arrays)
        before = {}
        if before_stem:
            try:
                known, known_arrays = load(before_stem)
                before = {n: (known["values"][n], known_arrays) for n in inputs
                          if is_data(known["values"].get(n))}
            except (ObservationError, KeyError, TypeError):
                before = {}
        changed = []
        for name in inputs:
            if name in before:
                namespace[name] = decode(*before[name])
            mine = Encoder()
            node = mine.encode(namespace.get(name)) if name in namespace else {"t": "missing"}
            theirs = values.get(name)
            if is_data(node) and not same(node, mine.arrays, theirs, arrays):
                changed.append(name)
        if changed:
            raise ObservationError("your answer changed " + ", ".join(
                f"`{n}`" for n in changed[:3]) + " (the tests compare with the lesson's own)")
    except ObservationError as exc:
        _reply({"ok": False, "why": str(exc)[:300]})
        return
    except Exception as exc:  # noqa: BLE001 - a file the decoder rejects in another way
        _reply({"ok": False, "why": f"your notebook's values could not be read "
                                    f"({type(exc).__name__})"})
        return
    for name, value in bound.items():
        if value is _UNBOUND:
            namespace.pop(name, None)
        else:
            namespace[name] = value
    _reply({"ok": True, "why": ""})


def replay_end(namespace: dict) -> None:
    """Trusted kernel, after the verdict run: undo the changes the replayed calls made to
    their arguments, put the reference's values back and every binding of the namespace as
    it was after the reference's run (names the verdict run bound, from the student's
    values, are removed), so that the lesson's later cells and questions run as the
    instructor's lesson does."""
    for target, saved in reversed(_TRUSTED.pop("undo", [])):
        try:
            _assign_into(target, saved)
        except Exception:  # noqa: BLE001 - best effort: the bindings below are what counts
            pass
    namespace.update(_TRUSTED.pop("reference", {}))
    snapshot = _TRUSTED.pop("namespace", None)
    if snapshot is not None:
        for name in [n for n in namespace if n not in snapshot]:
            del namespace[name]
        for name, value in snapshot.items():
            if namespace.get(name, _TRUSTED) is not value:
                namespace[name] = value
    _reply({"ok": True})
