"""Files written all or nothing, and torch files read safely.

Every file the package writes (checkpoints, model files, reports, videos,
converted metric weights) goes through atomic_write; every torch file it reads
goes through load_weights_only (never a plain unpickle).
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import torch


def _file_mode(path: Path) -> int:
    """The permissions a write of `path` should leave: the existing file's, else
    what open() would give a new file under the process's umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def atomic_write(path: Path, write) -> None:
    """Create or replace `path` with what `write(binary file)` writes, all or nothing.

    The data goes to a temporary file beside `path` (mkstemp: mode 0600, which
    is then set to what a plain write would have given) and replaces `path`
    in one rename after an fsync."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_weights_only(path: str | os.PathLike, arg: str, what: str = "torch file"):
    """torch.load(path, weights_only=True) on the CPU, with errors that name
    the argument `arg`: a missing file, or one torch cannot read (corrupt,
    truncated, or holding objects other than tensors and builtins)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{arg}: {path} is not a readable {what} ({type(e).__name__}: {e})") from e
