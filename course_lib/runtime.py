"""Where the course runs: versions, accelerators, hosted-notebook detection, seeding, profiles.

Nothing here imports a deep-learning framework at module import time. Functions that need a
framework import it when called, and say so in their docstring.
"""

from __future__ import annotations

import functools
import importlib.metadata as _metadata
import os
import platform
import random
import shutil
import subprocess
import sys
from collections.abc import Mapping

#: The profiles a notebook's ``PROFILE`` parameter accepts (CURRICULUM section 3.4).
PROFILES = ("smoke", "full")

#: Distribution names whose versions are recorded with every result. A framework may be
#: installed under either name (``tensorflow`` or ``tensorflow-cpu``, ``xgboost`` or
#: ``xgboost-cpu``); the first one installed wins.
_DISTRIBUTIONS = {
    "python": None,
    "numpy": ("numpy",),
    "scikit-learn": ("scikit-learn",),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "jax": ("jax",),
    "jaxlib": ("jaxlib",),
    "flax": ("flax",),
    "optax": ("optax",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}

#: Import names of the deep-learning frameworks, for :func:`accelerators`.
FRAMEWORKS = ("torch", "tensorflow", "jax")


@functools.cache
def framework_versions() -> dict[str, str | None]:
    """Installed versions of Python and every framework the course uses.

    Read from package metadata, so nothing is imported. Returns ``{name: version}`` with
    ``None`` for what is not installed, e.g. ``{"python": "3.11.7", "torch": "2.13.0+cpu",
    "tensorflow": "2.21.0", ...}``.
    """
    found: dict[str, str | None] = {}
    for name, dists in _DISTRIBUTIONS.items():
        if dists is None:
            found[name] = platform.python_version()
            continue
        found[name] = None
        for dist in dists:
            try:
                found[name] = _metadata.version(dist)
                break
            except _metadata.PackageNotFoundError:
                continue
    return found


def hosted_environment(environ: Mapping[str, str] | None = None) -> str:
    """Which hosted notebook service this process runs in.

    Returns ``"colab"``, ``"kaggle"``, ``"binder"`` or ``"local"``. Detection uses only
    environment variables each service sets (``COLAB_RELEASE_TAG``/``COLAB_GPU``/
    ``COLAB_TPU_ADDR``; ``KAGGLE_KERNEL_RUN_TYPE``; ``BINDER_SERVICE_HOST``/
    ``BINDER_LAUNCH_HOST``/``BINDER_REQUEST``), so it is cheap and testable with ``environ``.
    """
    env = os.environ if environ is None else environ
    if any(k in env for k in ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_TPU_ADDR")):
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in env:
        return "kaggle"
    if any(k in env for k in ("BINDER_SERVICE_HOST", "BINDER_LAUNCH_HOST", "BINDER_REQUEST")):
        return "binder"
    return "local"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_names() -> list[str]:
    # Prefer a framework that is already imported (no new import cost); else nvidia-smi.
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # a broken CUDA install must not stop a record
            pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True)
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (subprocess.SubprocessError, OSError):
            pass
    return []


@functools.cache
def device_description() -> str:
    """One line naming this machine's hardware, stored with every recorded result.

    Example: ``"CPU: AMD EPYC 7B13 (2 cores); GPU: none"``. The GPU part lists CUDA GPUs
    (from an already-imported torch, else ``nvidia-smi``) and ``TPU`` when a Colab/Cloud TPU
    is announced by the environment (``COLAB_TPU_ADDR``, ``TPU_NAME``, ``TPU_ACCELERATOR_TYPE``).
    """
    parts = [f"CPU: {_cpu_model()} ({os.cpu_count()} cores)"]
    gpus = _gpu_names()
    parts.append("GPU: " + (", ".join(gpus) if gpus else "none"))
    tpu = next((os.environ[k] for k in ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "COLAB_TPU_ADDR")
                if os.environ.get(k)), None)
    if tpu:
        parts.append(f"TPU: {tpu}")
    return "; ".join(parts)


def accelerators(frameworks=FRAMEWORKS) -> list[dict]:
    """The devices each framework sees, one dict per (framework, device).

    Imports each named framework (seconds each: TensorFlow about 7 s on 2 cores). Keys:
    ``framework``, ``version``, ``device`` (the framework's own name for it, e.g. ``"cpu"``,
    ``"cuda:0"``, ``"/physical_device:CPU:0"``, ``"TFRT_CPU_0"``), ``kind`` (``"CPU"``,
    ``"GPU"``, ``"TPU"``, ``"MPS"``), and ``note``. A framework that is not installed or fails
    to import gives one row with ``device=None`` and the reason in ``note`` instead of raising
    (on a Colab TPU runtime TensorFlow is absent, and the lessons go on without it).

    Raises:
        ValueError: a name outside :data:`FRAMEWORKS`.
    """
    rows: list[dict] = []
    for name in frameworks:
        if name not in FRAMEWORKS:
            raise ValueError(f"accelerators(): unknown framework {name!r}; use one of {FRAMEWORKS}")
        try:
            module = __import__(name)
        except Exception as exc:  # ImportError, or a broken install
            rows.append({"framework": name, "version": None, "device": None, "kind": None,
                         "note": f"cannot import: {type(exc).__name__}: {exc}"})
            continue
        version = getattr(module, "__version__", None)
        if name == "torch":
            rows.append({"framework": name, "version": version, "device": "cpu", "kind": "CPU",
                         "note": f"{module.get_num_threads()} threads"})
            if module.cuda.is_available():
                for i in range(module.cuda.device_count()):
                    rows.append({"framework": name, "version": version, "device": f"cuda:{i}",
                                 "kind": "GPU", "note": module.cuda.get_device_name(i)})
            mps = getattr(module.backends, "mps", None)
            if mps is not None and mps.is_available():
                rows.append({"framework": name, "version": version, "device": "mps",
                             "kind": "MPS", "note": "Apple GPU"})
        elif name == "tensorflow":
            for dev in module.config.list_physical_devices():
                rows.append({"framework": name, "version": version, "device": dev.name,
                             "kind": dev.device_type, "note": ""})
        else:  # jax
            for dev in module.devices():
                rows.append({"framework": name, "version": version, "device": str(dev),
                             "kind": dev.platform.upper(),
                             "note": getattr(dev, "device_kind", "")})
    return rows


def check_profile(profile: str) -> str:
    """Validate a notebook's ``PROFILE`` parameter and make it the active profile.

    Returns the profile (``"smoke"`` or ``"full"``) and sets ``COURSE_PROFILE_ACTIVE`` so
    that recorded results say which profile produced them.

    Raises:
        ValueError: anything else, with a message that says how to choose one.
    """
    if profile not in PROFILES:
        raise ValueError(
            f"PROFILE must be one of {PROFILES}, got {profile!r}. Set it in the notebook's "
            "parameters cell, with papermill (-p PROFILE smoke), with `make course "
            "PROFILE=smoke`, or with the environment variable COURSE_PROFILE."
        )
    os.environ["COURSE_PROFILE_ACTIVE"] = profile
    return profile


def seed_everything(seed: int, frameworks=("torch", "tensorflow", "jax")):
    """Seed Python's ``random``, NumPy's global generator, and each named framework.

    Frameworks that are not installed are skipped. Keras, if already imported, is seeded with
    ``keras.utils.set_random_seed`` (which seeds its backend); that function also imports
    TensorFlow to seed it, which is prevented when ``"tensorflow"`` is not named (a kernel
    that never uses TensorFlow keeps about 0.6 GB free). Note: seeding makes runs
    repeatable on one machine; it does not make different frameworks draw the same random
    numbers (their generators differ), which is why the course makes initial weights once in
    NumPy. Imports the named frameworks.

    Args:
        seed: a non-negative int below 2**32.

    Returns:
        A JAX PRNG key (``jax.random.key(seed)``) if ``"jax"`` is named and installed, else None.

    Raises:
        ValueError: a negative or too-large seed, or a non-int.
    """
    import numpy as np

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses started from here
    key = None
    for name in frameworks:
        try:
            module = __import__(name)
        except ImportError:
            continue
        if name == "torch":
            module.manual_seed(seed)
        elif name == "tensorflow":
            module.random.set_seed(seed)
        elif name == "jax":
            key = module.random.key(seed)
    if "keras" in sys.modules:
        if "tensorflow" in frameworks or "tensorflow" in sys.modules:
            sys.modules["keras"].utils.set_random_seed(seed)
        else:
            _seed_keras_without_tensorflow(sys.modules["keras"], seed)
    return key


def _seed_keras_without_tensorflow(keras, seed: int) -> None:
    """``keras.utils.set_random_seed`` also seeds TensorFlow, and so imports it (about 0.6 GB
    and seconds) wherever it is installed, whatever the backend. When the caller did not name
    TensorFlow, that import is blocked for the call; Keras's cached "TensorFlow is absent"
    answer is then forgotten, so a later ``import tensorflow`` works with Keras as usual."""
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        keras.utils.set_random_seed(seed)
    finally:
        if "tensorflow" in sys.modules and sys.modules["tensorflow"] is None:
            del sys.modules["tensorflow"]
        lazy = getattr(sys.modules.get("keras.src.utils.module_utils"), "tensorflow", None)
        if getattr(lazy, "_available", None) is False:  # Keras's LazyModule cache
            setattr(lazy, "_available", None)  # noqa: B010 - lazy may be None for mypy


def importable(name: str) -> bool:
    """Whether ``import name`` would find a module, without importing it.

    Uses :func:`importlib.util.find_spec` on the top-level package, so it costs milliseconds
    where importing TensorFlow costs seconds and about 0.6 GB. On a Colab TPU runtime
    ``importable("tensorflow")`` is False (those runtimes ship no TensorFlow). A package that is
    found but broken still fails when imported.

    Args:
        name: an import name such as ``"tensorflow"``, ``"torch"``, ``"jax"``.

    Raises:
        ValueError: an empty name or one with a dot (``"tensorflow.keras"``): pass the
            top-level package.
    """
    import importlib.util

    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"importable() takes a top-level package name such as 'tensorflow', "
                         f"got {name!r}")
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def skip_remaining_cells(reason: str) -> None:
    """Make every later cell of this notebook print ``skipped: <reason>`` instead of running.

    For a lesson that cannot run at all here (lesson 05 is TensorFlow, and Colab's TPU
    runtimes ship no TensorFlow): the notebook then finishes, every cell says why it did
    nothing, and nothing is recorded. It registers an IPython input transformer in this
    kernel; restarting the kernel removes it. Calling it again replaces the reason.

    Raises:
        RuntimeError: outside an IPython/Jupyter kernel (a script should just stop).
        ValueError: an empty reason.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("skip_remaining_cells() needs a reason that tells the reader what to do")
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None
    shell = get_ipython() if get_ipython else None
    if shell is None:
        raise RuntimeError("skip_remaining_cells() works in a Jupyter or IPython kernel only")
    line = f"print({'skipped: ' + reason.strip()!r})\n"

    def _skip(lines):
        return [line]

    setattr(_skip, "course_skip", True)  # noqa: B010 - marks the course's transformer
    transformers = shell.input_transformers_cleanup
    transformers[:] = [t for t in transformers if not getattr(t, "course_skip", False)]
    transformers.append(_skip)


def memory_mb(*, peak: bool = False) -> float:
    """This process's resident memory in MB (2**20 bytes): now (``VmRSS``) or, with
    ``peak=True``, the most it has held so far (``VmHWM``), read from ``/proc/self/status``.

    Where there is no ``/proc`` (macOS), both give the peak from
    ``resource.getrusage(...).ru_maxrss`` (bytes on macOS, kB on Linux); where neither exists
    (Windows), NaN. Counts every resident page, the frameworks' shared libraries included
    (``import tensorflow`` alone: about 0.6 GB). Imports nothing beyond the standard library, so
    worker scripts can measure themselves with it.
    """
    field = "VmHWM:" if peak else "VmRSS:"
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 2**20 if sys.platform == "darwin" else value / 1024
