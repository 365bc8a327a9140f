"""Files written all or nothing, and torch files read safely.

Every file the package writes (checkpoints, model files, reports, videos,
converted metric weights) goes through atomic_write; every torch file it reads
goes through load_weights_only (never a plain unpickle).

atomic_write writes `.<name>.<8 random characters>.tmp` beside its target
and renames it. A process killed mid-write leaves that file behind; the next
write of the same target removes it (remove_stale_temporaries), recognising
it by that name, by its age, and by the lock a live write holds on its file.
A full disk or quota (ENOSPC, EDQUOT) raises NoSpaceError, naming the file.

folder_lock holds a folder for one process at a time: a training run's
workdir, a demo's training folder.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import torch

NO_SPACE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
# A temporary file younger than this may belong to a write that has created it but not locked it yet.
STALE_AFTER_S = 10.0


# The folders this process holds (folder_lock), by real path: a nested hold of one of them takes no second lock.
_HELD: dict[str, int] = {}


class FolderInUse(FileExistsError):
    """Another process holds the folder (folder_lock)."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, arg: str, what: str = "another mcvd process"):
    """Hold `folder` (which exists) for this process while the block runs: an
    exclusive flock on the folder itself, so that two runs never write the same
    files. FolderInUse naming `arg` when another process holds it (`what` says
    which); a lock dies with its process, so a killed run leaves none behind.
    Held by this process already (a demo's training folder, handed to train),
    it is held again without a second lock, which flock would refuse. Where the
    file system cannot lock a folder (NFS), the block runs unguarded."""
    key = os.path.realpath(folder)
    if key in _HELD:
        yield
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(f"{arg}: {folder} is in use by {what}; wait for it to end, or choose another "
                              f"folder") from None
        except OSError:
            # A file system that cannot lock a folder (NFS emulates flock with byte-range locks, which a
            # folder, opened for reading, cannot take): the work goes on unguarded rather than not at all.
            yield
            return
        _HELD[key] = fd
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)


class NoSpaceError(OSError):
    """A write that ran out of disk space (ENOSPC) or quota (EDQUOT); str() names the
    file, what was written and what is free. .errno is the original error's."""

    def __init__(self, code: int, message: str, filename):
        super().__init__(code, message, str(filename))

    def __str__(self) -> str:
        return self.strerror


def no_space_error(err: OSError, path: Path, written: int | None, replaced: int | None) -> NoSpaceError:
    """NoSpaceError for `err` (an ENOSPC or EDQUOT error) raised while writing `path`:
    `written` bytes of it got out before the failure (None: unknown); `replaced`: the
    size of the file it would have replaced (None: a new file)."""
    parts = [f"{NO_SPACE[err.errno]} for {path}"]
    if written is not None:
        parts[0] += f": {written:,} bytes of it were written before the write failed"
    if replaced is not None:
        parts.append(f"the file it replaces has {replaced:,} bytes (about what is needed, beside it, until the "
                     f"rename)")
    try:
        parts.append(f"{shutil.disk_usage(path.parent).free:,} bytes are free on the file system of {path.parent}")
    except OSError:
        pass
    parts.append(f"{path} is unchanged" if replaced is not None else "nothing was written")
    return NoSpaceError(err.errno, "; ".join(parts), path)


def check_writable_folder(folder: str | os.PathLike, arg: str) -> None:
    """Raise an error naming `arg` unless files can be created in `folder`, or, when
    it does not exist yet, in the nearest existing folder above it (where it would
    be created): NotADirectoryError if `folder` or that one is a file,
    PermissionError (or the OSError met) if a file cannot be created there. Tried
    with a temporary file, which also sees read-only file systems and permissions
    that os.access does not (as for root)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{arg}: {folder} exists and is not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{arg}: cannot create {folder}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise type(err)(f"{arg}: cannot create files in {existing} ({err.strerror or err})") from None


def temporary_name(path: str | os.PathLike) -> re.Pattern:
    """The names atomic_write gives its temporary files for `path` (match with fullmatch)."""
    # mkstemp(prefix=".<name>.", suffix=".tmp"): 8 characters of tempfile's alphabet in between.
    return re.compile(rf"\.{re.escape(Path(path).name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temporaries(path: str | os.PathLike, min_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the temporary files that interrupted atomic_write calls for `path`
    left beside it; returns those removed.

    Only regular files named as atomic_write names them for this target
    (`.<name>.<8 characters>.tmp`) are candidates, and of those only files
    older than `min_age_s` that no live write holds: a write keeps its
    temporary file locked (flock) until it is renamed, but another process
    may have created its file and not locked it yet. min_age_s=0 is for a
    caller that holds the folder (folder_lock): no other process writes there."""
    path = Path(path)
    pattern, removed = temporary_name(path), []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < min_age_s:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a write in progress
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def _file_mode(path: Path) -> int:
    """The permissions a write of `path` should leave: the existing file's, else
    what open() would give a new file under the process's umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status). Elsewhere it can only be
    read by setting another: 0o077 for that instant, so that a file another thread creates meanwhile gets
    fewer permissions, never more."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Create or replace `path` with what `write(binary file)` writes, all or nothing.

    The data goes to a temporary file beside `path` (mkstemp: mode 0600, which
    is then set to what a plain write would have given) and replaces `path`
    in one rename after an fsync (then the folder is synced, so that the
    rename is on disk too). Temporary files that killed writes of `path`
    left are removed first (remove_stale_temporaries). A full disk or quota
    raises NoSpaceError naming `path`; `path` is then unchanged."""
    path = Path(path)
    if not path.parent.is_dir():  # named here: mkstemp would name its temporary file
        raise FileNotFoundError(f"{path}: no such folder {path.parent} to write it in")
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    fh = None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the file is closed: this write is alive
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else None
        if fh is None:
            os.close(fd)
        os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            replaced = path.stat().st_size if path.is_file() else None
            raise no_space_error(err, path, written, replaced) from err
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a power cut (the file's own fsync does not cover its
    name). Where folders cannot be opened or synced (some file systems), the rename stands as written."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class DigestMismatch(ValueError):
    """A file's SHA-256 is not the expected one; `digest` is the one found."""

    def __init__(self, message: str, digest: str):
        super().__init__(message)
        self.digest = digest


def load_weights_only(path: str | os.PathLike, arg: str, what: str = "torch file", *,
                      sha256: str | None = None):
    """torch.load(path, weights_only=True) on the CPU, with errors that name
    the argument `arg`: a missing file, or one torch cannot read (corrupt,
    truncated, or holding objects other than tensors and builtins).

    sha256: the file's expected SHA-256 (hex); the bytes are read once, and the
    bytes checked are the bytes loaded (a file replaced in between cannot slip
    through). A mismatch raises DigestMismatch before anything is unpickled."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoint.pt"  # a training workdir's
        raise FileNotFoundError(f"{arg}: {path} is a folder; expected a file"
                                + (f" (its checkpoint: {inside})" if inside.is_file() else ""))
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no such file: {path}")
    source: Path | io.BytesIO = path
    if sha256 is not None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise DigestMismatch(f"{arg}: {path} has SHA-256 {digest}, expected {sha256}", digest)
        source = io.BytesIO(data)
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{arg}: {path} is not a readable {what} ({_load_problem(e)})") from e


def _load_problem(err: Exception) -> str:
    """What torch.load found wrong, without its advice to load with weights_only=False (which would run
    whatever code the file holds: mcvd never does)."""
    text = str(err)
    # torch up to 2.10 says "WeightsUnpickler error: Unsupported global: ..."; later ones "Trying to load
    # unsupported GLOBAL posix.system whose module posix is blocked."
    found = (re.search(r"WeightsUnpickler error:\s*(.*?)(?:\. Please use|\s*Check the documentation|$)", text, re.S)
             or re.search(r"(Trying to load unsupported GLOBAL [^\n]*?)\.?\s*(?:\n|$)", text))
    if found:
        problem = " ".join(found.group(1).split())
        if problem.lower().startswith(("unsupported global", "trying to load unsupported global")):
            return f"it holds objects other than tensors and plain data, which are not loaded: " \
                   f"{problem[0].lower()}{problem[1:]}"
        return f"not a torch file, or a damaged one: {problem}"
    # Bytes that are no pickle (or a truncated zip) fail deep in the unpickler, as an error such as KeyError: 101
    # that means nothing to a reader: said as what it is, with the error for a bug report.
    return f"not a torch file, or a damaged one; torch said {type(err).__name__}: {text.split('. ')[0].strip()}"
