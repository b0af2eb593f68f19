"""The course datasets (CURRICULUM section 5): fixed splits, checksummed files, safe downloads.

- :func:`load_digits` and :func:`load_breast_cancer`: scikit-learn's bundled datasets with the
  course's fixed train/validation/test split, as NumPy arrays.
- :func:`load_seattle_weather`: a real tabular dataset shipped under ``data/``.
- :func:`data_path`: the path of a file under ``data/`` after checking its SHA-256 against
  ``data/MANIFEST.json``.
- :func:`fetch`: download-and-cache for larger optional files, verified after every download
  (with pooch), written atomically.
- :func:`batch_indices`: the same mini-batches in the same order for every framework.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from course_lib import paths

#: The course's split of every dataset: fractions of the whole, stratified by label, made with
#: this seed whatever the lesson's SEED (so results of different lessons and students compare).
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 20261123


class DataError(RuntimeError):
    """Base class for data problems; the message always says what to do."""


class DataFileMissing(DataError, FileNotFoundError):
    """A file the course ships under ``data/`` is not there."""


class ChecksumMismatch(DataError, ValueError):
    """A file's SHA-256 differs from the one recorded for it."""


@dataclasses.dataclass(frozen=True)
class Split:
    """A dataset split into train/validation/test parts.

    Attributes:
        x_train, x_val, x_test: float32 arrays ``(n_part, n_features)`` (or images, see
            :meth:`images`).
        y_train, y_val, y_test: int64 class labels ``(n_part,)``.
        feature_names: one name per feature column.
        class_names: one name per class label value (label ``i`` is ``class_names[i]``).
        name: the dataset's name.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    name: str

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def images(self, part: str = "train") -> np.ndarray:
        """The ``part`` (``"train"``, ``"val"``, ``"test"``) of the digits as NHWC images,
        float32 ``(n, 8, 8, 1)``. Raises ValueError for other datasets or parts."""
        if self.name != "digits":
            raise ValueError(f"images() is for the digits dataset, not {self.name!r}")
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
        x = getattr(self, f"x_{part}")
        return x.reshape(-1, 8, 8, 1)

    def standardized(self) -> Split:
        """A copy with every feature scaled to zero mean and unit variance, using the mean and
        standard deviation of the *training* part only (no test-set leakage). Features with
        zero variance in training are left centred but unscaled."""
        mean = self.x_train.mean(axis=0)
        std = self.x_train.std(axis=0)
        std = np.where(std > 0, std, 1.0)

        def scale(x):
            return ((x - mean) / std).astype(np.float32)

        return dataclasses.replace(self, x_train=scale(self.x_train), x_val=scale(self.x_val),
                                   x_test=scale(self.x_test))

    def subset(self, fraction: float, seed: int) -> Split:
        """A copy whose training part keeps ``fraction`` (0 < fraction <= 1) of its rows,
        chosen with ``seed``; validation and test parts are unchanged (so scores compare).
        Raises ValueError for a fraction outside (0, 1]."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        n = len(self.y_train)
        keep = np.sort(np.random.default_rng(seed).permutation(n)[: max(1, round(n * fraction))])
        return dataclasses.replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep])


def split_indices(labels: np.ndarray, fractions=SPLIT_FRACTIONS, seed: int = SPLIT_SEED):
    """Stratified train/validation/test row indices.

    Args:
        labels: int array ``(n,)``.
        fractions: three positive fractions summing to 1.
        seed: the split's seed.

    Returns:
        Three sorted int64 index arrays that partition ``range(n)``; each class is divided in
        the given fractions (rounded, the remainder going to the test part).

    Raises:
        ValueError: fractions that are not three positive numbers summing to 1.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        n_train = round(len(rows) * fractions[0])
        n_val = round(len(rows) * fractions[1])
        parts[0].append(rows[:n_train])
        parts[1].append(rows[n_train:n_train + n_val])
        parts[2].append(rows[n_train + n_val:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)


def _make_split(x, y, feature_names, class_names, name) -> Split:
    train, val, test = split_indices(y)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    return Split(x[train], y[train], x[val], y[val], x[test], y[test],
                 tuple(feature_names), tuple(class_names), name)


@functools.cache
def load_digits() -> Split:
    """scikit-learn's handwritten digits (UCI ML hand-written digits, 1797 images of 8x8 pixels,
    shipped inside scikit-learn), split 1078/359/360 (train/val/test, stratified).

    Features are the 64 pixel intensities divided by 16, so float32 in [0, 1], ``(n, 64)`` in
    row-major (h, w) order; labels int64 in 0..9. ``Split.images()`` gives ``(n, 8, 8, 1)``.
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    return _make_split(bunch.data / 16.0, bunch.target, names, [str(d) for d in range(10)],
                       "digits")


@functools.cache
def load_breast_cancer() -> Split:
    """scikit-learn's Wisconsin diagnostic breast cancer data (569 tumours, 30 real-valued
    features computed from cell-nucleus images, shipped inside scikit-learn), split 341/113/115.

    Features float32 ``(n, 30)`` in their original units (not scaled: use
    :meth:`Split.standardized` or a scikit-learn pipeline); labels int64, 0 = malignant,
    1 = benign (scikit-learn's coding).
    """
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load()
    return _make_split(bunch.data, bunch.target, bunch.feature_names, bunch.target_names,
                       "breast_cancer")


# --------------------------------------------------------------------------- shipped files


data_dir = paths.data_dir  # the folder rules live in course_lib.paths


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (``pooch.file_hash``, read in chunks)."""
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def registry(entries: Mapping[str, Mapping]) -> dict[str, str]:
    """The pooch registry of a manifest: ``{relative path: "sha256:<hex>"}``.

    ``entries`` is a parsed ``MANIFEST.json`` (``{path: {"sha256": ..., ...}}``); the same
    registry checks the checkout's files (:func:`data_path`) and downloads them on Colab
    (:func:`fetch_registry`).

    Raises:
        DataError: an entry without a 64-hex-digit ``sha256``, or a path outside its folder.
    """
    out = {}
    for name, entry in entries.items():
        digest = str(entry.get("sha256", "")).lower() if isinstance(entry, Mapping) else ""
        parts = Path(name).parts
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(f"manifest entry {name!r} has no valid sha256 (64 hex digits)")
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise DataError(f"the manifest names a file outside its folder: {name!r}")
        out[name] = f"sha256:{digest}"
    return out


def manifest(folder: str | os.PathLike | None = None) -> dict:
    """The parsed ``MANIFEST.json`` of the data folder: ``{file name: {sha256, bytes, source,
    licence, description, ...}}``. Raises :class:`DataFileMissing` if it is absent."""
    folder = Path(folder) if folder is not None else data_dir()
    path = folder / "MANIFEST.json"
    if not path.is_file():
        raise DataFileMissing(
            f"{path} is missing. The course's data folder is incomplete: restore it with "
            "`git checkout -- data/` (or set COURSE_DATA_DIR to a folder that has it)."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def data_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The path of the shipped data file ``name``, after checking its SHA-256.

    Raises:
        KeyError: ``name`` is not in the manifest (the message lists the files that are).
        DataFileMissing: the file is listed but absent; says how to restore it.
        ChecksumMismatch: the file's SHA-256 differs from the manifest's (it was edited or
            damaged); says how to restore it. The file is left as it is: it is in git's keeping.
    """
    folder = Path(folder) if folder is not None else data_dir()
    entries = manifest(folder)
    if name not in entries:
        raise KeyError(f"{name!r} is not a course data file; the files are {sorted(entries)}")
    path = folder / name
    if not path.is_file():
        raise DataFileMissing(
            f"data file {path} is missing. Restore it with `git checkout -- data/{name}` "
            "(or re-clone the course)."
        )
    expected = registry({name: entries[name]})[name].removeprefix("sha256:")
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"data file {path} has SHA-256 {actual}, expected {expected}: it was changed or "
            f"damaged. Restore it with `git checkout -- data/{name}`."
        )
    return path


@functools.cache
def load_seattle_weather() -> Split:
    """Seattle daily weather 2012-2015 (NOAA, shipped as ``data/seattle_weather.csv``): predict
    the day's weather type from its measurements.

    Features float32 ``(n, 6)``: precipitation (mm), temp_max, temp_min (degrees C), wind
    (m/s), and the day of year encoded as sin and cos (so 31 Dec and 1 Jan are neighbours).
    Labels int64 indexing ``class_names`` = (drizzle, fog, rain, snow, sun). 1461 rows split
    stratified 60/20/20. Raises the errors of :func:`data_path`.
    """
    import pandas as pd

    frame = pd.read_csv(data_path("seattle_weather.csv"), parse_dates=["date"])
    day = frame["date"].dt.dayofyear.to_numpy() / 365.25 * 2 * np.pi
    x = np.column_stack([frame["precipitation"], frame["temp_max"], frame["temp_min"],
                         frame["wind"], np.sin(day), np.cos(day)])
    classes = sorted(frame["weather"].unique())
    y = frame["weather"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    names = ["precipitation_mm", "temp_max_c", "temp_min_c", "wind_m_s", "day_sin", "day_cos"]
    return _make_split(x, y, names, classes, "seattle_weather")


def load_seattle_temps() -> np.ndarray:
    """Hourly air temperature in Seattle for 2010 (NOAA, ``data/seattle_temps.csv``), float32
    ``(8759,)`` in degrees Fahrenheit, in time order. Raises the errors of :func:`data_path`."""
    import pandas as pd

    frame = pd.read_csv(data_path("seattle_temps.csv"))
    return frame["temp"].to_numpy(dtype=np.float32)


# --------------------------------------------------------------------------- downloads


cache_dir = paths.cache_dir


def fetch(url: str, sha256: str, fname: str | None = None,
          folder: str | os.PathLike | None = None, progressbar: bool = False) -> Path:
    """Download ``url`` into the cache (once) and return the local path.

    Uses pooch: the file is streamed to a temporary name in the cache folder, its SHA-256 is
    checked, and only then is it moved into place, so an interrupted or corrupted download
    never leaves a file under the final name. A cached file is re-checked on every call and
    downloaded again if it no longer matches.

    Args:
        url: http(s), ftp or file URL.
        sha256: the expected hex SHA-256 (64 hex digits) of the file.
        fname: the cached file's name (default: derived from the URL).
        folder: the cache folder (default :func:`cache_dir`).
        progressbar: show a tqdm progress bar.

    Raises:
        ValueError: ``sha256`` is not 64 hex digits.
        ChecksumMismatch: the downloaded file's SHA-256 differs; nothing is left in the cache
            (a stale cached copy that no longer matches is removed too).
        DataError: the download failed (network, HTTP error); nothing is left in the cache.
    """
    import pooch

    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    folder = Path(folder) if folder is not None else cache_dir()
    name = fname or pooch.utils.unique_file_name(url)
    target = folder / name
    with _download_errors(url, target, sha256):
        path = pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=name, path=folder,
                              progressbar=progressbar)
    return Path(path)


def fetch_registry(base_url: str, entries: Mapping[str, Mapping], folder: str | os.PathLike,
                   names: Sequence[str] | None = None) -> Path:
    """Download the files of a manifest from ``base_url`` into ``folder`` with one
    ``pooch.Pooch`` built from :func:`registry` (each file checked as :func:`fetch` does, and
    kept across calls while it matches); return ``folder``.

    Args:
        base_url: the URL of the folder the manifest describes (a trailing ``/`` is added).
        entries: the parsed manifest, ``{relative path: {"sha256": ...}}``.
        folder: the local folder (created).
        names: the files to fetch (default: all of them, sorted).

    Raises:
        DataError: a download failed, or the manifest is invalid (see :func:`registry`).
        ChecksumMismatch: a downloaded file does not match its SHA-256.
    """
    import pooch

    folder = Path(folder)
    store = pooch.create(path=folder, base_url=base_url.rstrip("/") + "/",
                         registry=registry(entries), allow_updates=True)
    for name in names if names is not None else sorted(store.registry):
        if name not in store.registry:
            raise DataError(f"{name!r} is not in the manifest at {base_url}")
        with _download_errors(store.get_url(name), folder / name,
                              store.registry[name].removeprefix("sha256:")):
            store.fetch(name)
    return folder


@contextlib.contextmanager
def _download_errors(url: str, target: Path, sha256: str):
    """Turn pooch's and requests' errors into the course's, removing a stale file."""
    import requests

    try:
        yield
    except ValueError as exc:
        _remove_if_stale(target, sha256)
        raise ChecksumMismatch(
            f"download of {url} does not match its SHA-256 (expected {sha256}); nothing was "
            "cached. The file on the server changed or the download was corrupted: try again, "
            f"and if it persists report the URL to the course maintainers. ({exc})"
        ) from None
    except (requests.exceptions.RequestException, OSError) as exc:
        _remove_if_stale(target, sha256)
        raise DataError(
            f"could not download {url}: {exc}. Check your network connection (the lessons' "
            "smoke profile needs none) or set COURSE_CACHE_DIR to a folder that has the file."
        ) from None


def _remove_if_stale(path: Path, sha256: str) -> None:
    if path.is_file() and sha256_of(path) != sha256:
        path.unlink()


# --------------------------------------------------------------------------- batches


def batch_indices(n: int, batch_size: int, *, seed: int, epoch: int = 0,
                  shuffle: bool = True, drop_last: bool = False) -> list[np.ndarray]:
    """The row indices of each mini-batch of one epoch, identical for every framework.

    The order is a permutation of ``range(n)`` drawn from ``np.random.default_rng([seed,
    epoch])`` (a different order each epoch, the same for every framework and run), cut into
    batches of ``batch_size``; the last one is shorter unless ``drop_last``.

    Returns:
        A list of int64 arrays of shape ``(batch_size,)`` (the last possibly shorter).

    Raises:
        ValueError: ``n`` < 1 or ``batch_size`` < 1.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
    order = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle
             else np.arange(n)).astype(np.int64)
    stop = n - n % batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]
