"""Simulates a runtime without TensorFlow (Colab's TPU runtimes ship none).

Put this folder first on PYTHONPATH: every finder on ``sys.meta_path`` is wrapped so that it
does not see ``tensorflow`` (or its submodules). ``import tensorflow`` then fails with
``ModuleNotFoundError: No module named 'tensorflow'`` and ``importlib.util.find_spec`` returns
None, as where TensorFlow is not installed. Used by tests/test_no_tensorflow.py; the kernels
papermill starts, and their subprocesses, inherit PYTHONPATH.
"""

import sys


def _hidden(name):
    return name == "tensorflow" or name.startswith("tensorflow.")


class _WithoutTensorFlow:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if _hidden(name) or not hasattr(self._finder, "find_spec"):
            return None
        return self._finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self._finder, attribute)


sys.meta_path[:] = [_WithoutTensorFlow(finder) for finder in sys.meta_path]
