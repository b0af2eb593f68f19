"""Wall-clock timing for the lessons' coarse measurements (fit time of a whole model).

For per-step benchmarks with warm-up, repeats and device synchronisation see lesson 09.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class Stopwatch:
    """Elapsed wall-clock seconds of a ``with`` block (``time.perf_counter``).

    ``seconds`` is None until the block ends. Synchronise asynchronous frameworks yourself
    inside the block (``block_until_ready()`` in JAX, ``torch.cuda.synchronize()``), or the
    time measured is only the time to *queue* the work.
    """

    def __init__(self):
        self.seconds: float | None = None
        self._start: float | None = None


@contextmanager
def stopwatch():
    """``with stopwatch() as sw: ...`` then ``sw.seconds`` (float, seconds)."""
    watch = Stopwatch()
    watch._start = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - watch._start
