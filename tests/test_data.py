import functools
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from course_lib import data

DATA = Path(__file__).resolve().parent.parent / "data"


# --------------------------------------------------------------------------- splits

@pytest.mark.parametrize("loader, n, features, classes", [
    (data.load_digits, 1797, 64, 10),
    (data.load_breast_cancer, 569, 30, 2),
    (data.load_seattle_weather, 1461, 6, 5),
])
def test_splits_partition_the_dataset_with_documented_shapes(loader, n, features, classes):
    split = loader()
    parts = [(split.x_train, split.y_train), (split.x_val, split.y_val), (split.x_test, split.y_test)]
    assert sum(len(y) for _, y in parts) == n
    for x, y in parts:
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), features)
    assert split.n_classes == classes
    assert abs(len(split.y_train) / n - 0.6) < 0.01
    # no row appears in two parts
    rows = {tuple(r) for r in split.x_train.round(5)}
    assert not rows & {tuple(r) for r in split.x_test.round(5)} or split.name == "seattle_weather"


def test_split_is_fixed_and_stratified():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    a = data.split_indices(labels)
    b = data.split_indices(labels)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(100))
    assert list(np.bincount(labels[a[0]])) == [30, 18, 12]
    c = data.split_indices(labels, seed=1)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.6, 0.3, 0.3), (1.0, 0.0, 0.0)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="three positive numbers"):
        data.split_indices(np.zeros(10, dtype=int), fractions)


def test_digits_scaled_and_images_are_nhwc():
    split = data.load_digits()
    assert 0.0 <= split.x_train.min() and split.x_train.max() <= 1.0
    images = split.images("test")
    assert images.shape == (len(split.y_test), 8, 8, 1)
    assert np.array_equal(images[3, 2, 5, 0], split.x_test[3, 2 * 8 + 5])
    with pytest.raises(ValueError, match="part"):
        split.images("validation")
    with pytest.raises(ValueError, match="digits"):
        data.load_breast_cancer().images()


def test_standardized_uses_training_statistics_only():
    split = data.load_breast_cancer()
    scaled = split.standardized()
    assert np.allclose(scaled.x_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(scaled.x_train.std(axis=0), 1, atol=1e-3)
    expected = (split.x_test - split.x_train.mean(0)) / split.x_train.std(0)
    assert np.allclose(scaled.x_test, expected, atol=1e-4)
    assert scaled.x_test.dtype == np.float32


def test_subset_keeps_val_and_test():
    split = data.load_digits()
    small = split.subset(0.25, seed=1)
    assert len(small.y_train) == round(len(split.y_train) * 0.25)
    assert small.x_test is split.x_test
    assert not np.array_equal(small.y_train, split.subset(0.25, seed=2).y_train)
    with pytest.raises(ValueError, match="fraction"):
        split.subset(0.0, seed=1)


# --------------------------------------------------------------------------- shipped files

def test_every_manifest_entry_matches_its_file_and_has_provenance():
    entries = data.manifest(DATA)
    assert entries
    for name, entry in entries.items():
        assert data.sha256_of(DATA / name) == entry["sha256"]
        assert (DATA / name).stat().st_size == entry["bytes"]
        assert entry["source"] and entry["licence"] and entry["description"]


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    shutil.copytree(DATA, folder)
    monkeypatch.setenv("COURSE_DATA_DIR", str(folder))
    data.load_seattle_weather.cache_clear()
    yield folder
    data.load_seattle_weather.cache_clear()


def test_missing_file_says_how_to_restore(data_copy):
    (data_copy / "seattle_weather.csv").unlink()
    with pytest.raises(data.DataFileMissing, match=r"git checkout -- data/seattle_weather.csv"):
        data.load_seattle_weather()
    assert not (data_copy / "seattle_weather.csv").exists()


def test_changed_file_is_a_checksum_mismatch(data_copy):
    path = data_copy / "seattle_weather.csv"
    path.write_text(path.read_text().replace("rain", "RAIN", 1))
    with pytest.raises(data.ChecksumMismatch, match="expected 62f0609f"):
        data.data_path("seattle_weather.csv")


def test_unknown_name_lists_the_files(data_copy):
    with pytest.raises(KeyError, match="seattle_temps.csv"):
        data.data_path("mnist.csv")


def test_missing_manifest(data_copy):
    (data_copy / "MANIFEST.json").unlink()
    with pytest.raises(data.DataFileMissing, match="MANIFEST.json is missing"):
        data.data_path("seattle_weather.csv")


def test_seattle_temps_is_an_hourly_year():
    temps = data.load_seattle_temps()
    assert temps.shape == (8759,) and temps.dtype == np.float32
    assert 10 < temps.min() < temps.max() < 110  # degrees Fahrenheit


# --------------------------------------------------------------------------- downloads

PAYLOAD = b"real data would be here\n" * 1000


@pytest.fixture
def server(tmp_path):
    """A local HTTP server (127.0.0.1, ephemeral port) serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "file.bin").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


def _listing(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_downloads_verifies_and_caches(server, tmp_path):
    url, www = server
    cache = tmp_path / "cache"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = data.fetch(f"{url}/file.bin", sha, fname="file.bin", folder=cache)
    assert path.read_bytes() == PAYLOAD
    (www / "file.bin").unlink()  # a second call must not need the server
    assert data.fetch(f"{url}/file.bin", sha, fname="file.bin", folder=cache) == path
    assert _listing(cache) == ["file.bin"]


def test_fetch_mismatch_leaves_nothing(server, tmp_path):
    url, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(data.ChecksumMismatch, match="nothing was cached"):
        data.fetch(f"{url}/file.bin", "0" * 64, fname="file.bin", folder=cache)
    assert _listing(cache) == []


def test_fetch_replaces_a_corrupted_cached_copy(server, tmp_path):
    url, _ = server
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "file.bin").write_bytes(b"truncated")
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert data.fetch(f"{url}/file.bin", sha, fname="file.bin", folder=cache).read_bytes() == PAYLOAD


def test_fetch_http_error_removes_stale_copy_and_says_what_to_do(server, tmp_path):
    url, _ = server
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "gone.bin").write_bytes(b"stale")
    with pytest.raises(data.DataError, match="could not download .*COURSE_CACHE_DIR"):
        data.fetch(f"{url}/gone.bin", hashlib.sha256(PAYLOAD).hexdigest(), fname="gone.bin",
                   folder=cache)
    assert _listing(cache) == []


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "0" * 63])
def test_fetch_rejects_malformed_hash(bad, tmp_path):
    with pytest.raises(ValueError, match="64 hex digits"):
        data.fetch("http://127.0.0.1:9/x", bad, folder=tmp_path)


# --------------------------------------------------------------------------- batches

def test_batch_indices_cover_each_row_once_and_repeat():
    batches = data.batch_indices(10, 4, seed=1)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches)) == list(range(10))
    again = data.batch_indices(10, 4, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other_epoch = data.batch_indices(10, 4, seed=1, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other_epoch))
    assert [len(b) for b in data.batch_indices(10, 4, seed=1, drop_last=True)] == [4, 4]
    assert np.array_equal(np.concatenate(data.batch_indices(5, 2, seed=0, shuffle=False)),
                          np.arange(5))
    with pytest.raises(ValueError):
        data.batch_indices(0, 4, seed=1)
