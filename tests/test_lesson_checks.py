"""Exercise tests of lesson 00 refuse answers that only look right (issue 17, item 7): an
always-equal int, and random draws faked with NumPy or made by reusing a split key. The tests
cells are taken from the notebook itself and run against such answers."""

from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

LESSON_00 = Path(__file__).resolve().parent.parent / "notebooks" / "00_setup_and_hardware.ipynb"


def _tests_cell(marker):
    cells = [c.source for c in nbformat.read(LESSON_00, as_version=4).cells
             if "tests" in c.metadata.get("tags", []) and marker in c.source]
    assert len(cells) == 1, marker
    return cells[0]


class AlwaysEqual(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


DEVICES = pd.DataFrame({"framework": ["torch", "jax"], "kind": ["CPU", "GPU"]})


def test_exercise_1_refuses_an_always_equal_int():
    cell = _tests_cell("count_accelerators(")
    right = {"devices": DEVICES, "np": np,
             "count_accelerators": lambda rows: sum(r.get("kind") in ("GPU", "TPU") for r in rows)}
    exec(cell, right)  # noqa: S102 (the notebook's own tests)
    with pytest.raises(AssertionError, match="plain int"):
        exec(cell, {"devices": DEVICES, "np": np,  # noqa: S102
                    "count_accelerators": lambda rows: AlwaysEqual(0)})


@pytest.mark.slow
def test_exercise_3_refuses_numpy_shortcuts_and_a_reused_key():
    import jax

    cell = _tests_cell("two_draws(SEED)")

    def right(seed):
        first, second = jax.random.split(jax.random.key(seed))
        return (np.asarray(jax.random.uniform(first, (4,))),
                np.asarray(jax.random.uniform(second, (4,))))

    def reused(seed):  # draws from the parent key, then splits it: the mistake
        key = jax.random.key(seed)
        key, sub = jax.random.split(key)
        return np.asarray(jax.random.uniform(jax.random.key(seed), (4,))), \
            np.asarray(jax.random.uniform(sub, (4,)))

    base = {"np": np, "jax": jax, "SEED": 3}
    exec(cell, {**base, "two_draws": right})  # noqa: S102
    for wrong in (lambda seed: (np.zeros(4), np.ones(4)), reused):
        with pytest.raises(AssertionError):
            exec(cell, {**base, "two_draws": wrong})  # noqa: S102
