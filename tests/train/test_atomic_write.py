"""atomic_write: all or nothing, and the permissions a plain write would give."""
import os
import stat

import pytest

from mcvd.fileio import atomic_write


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", lambda fh: fh.write(b"x"))
        os.umask(0o077)
        atomic_write(tmp_path / "b.bin", lambda fh: fh.write(b"x"))
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.bin") == 0o644
    assert mode(tmp_path / "b.bin") == 0o600


def test_replacing_keeps_the_file_permissions_and_replaces_the_content(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write(path, lambda fh: fh.write(b"new"))
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "d.bin"
    path.write_bytes(b"old")

    def broken(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin"]


def stale(path, age=3600.0):
    """A temporary file of an atomic_write of `path` that was killed, `age` seconds ago."""
    import time

    path.write_bytes(b"half")
    os.utime(path, (time.time() - age,) * 2)
    return path


def test_the_next_write_removes_what_killed_writes_of_the_same_file_left(tmp_path):
    import fcntl

    target = tmp_path / "checkpoint.pt"
    killed = [stale(tmp_path / ".checkpoint.pt.a1b2c3d4.tmp"), stale(tmp_path / ".checkpoint.pt.zz_9zz_9.tmp")]
    others = [stale(tmp_path / ".metrics.csv.a1b2c3d4.tmp"),      # another target's
              stale(tmp_path / ".checkpoint.pt.mine.tmp"),        # not our pattern
              stale(tmp_path / "checkpoint.pt.a1b2c3d4.tmp"),     # not hidden
              stale(tmp_path / ".checkpoint.pt.b1b2c3d4.tmp", age=0)]  # too recent: a write may be starting
    live = stale(tmp_path / ".checkpoint.pt.l1v3l1v3.tmp")
    with open(live, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a write in progress holds its file locked
        atomic_write(target, lambda out: out.write(b"new"))
    assert target.read_bytes() == b"new"
    assert not any(p.exists() for p in killed)
    assert all(p.exists() for p in [*others, live])


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    import errno

    from mcvd.fileio import NoSpaceError

    path = tmp_path / "e.bin"
    path.write_bytes(b"o" * 5000)

    def filling(fh):
        fh.write(b"x" * 1234)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(NoSpaceError) as info:
        atomic_write(path, filling)
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert f"no space left on the device for {path}: 1,234 bytes of it were written" in message
    assert "the file it replaces has 5,000 bytes" in message and "bytes are free" in message
    assert f"{path} is unchanged" in message
    assert path.read_bytes() == b"o" * 5000 and sorted(p.name for p in tmp_path.iterdir()) == ["e.bin"]

    def over_quota(fh):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(NoSpaceError, match=r"disk quota exceeded for .*new.bin: 0 bytes of it were written"):
        atomic_write(tmp_path / "new.bin", over_quota)
    assert not (tmp_path / "new.bin").exists()


def test_the_rename_is_synced_with_the_folder(tmp_path, monkeypatch):
    """The file's fsync does not cover its new name: the folder is synced after the rename."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd)))
    atomic_write(tmp_path / "f.bin", lambda fh: fh.write(b"x"))
    assert synced == [False, True]  # the file, then its folder


def test_a_folder_is_held_by_one_process_and_again_by_the_same(tmp_path):
    import subprocess
    import sys

    from mcvd.fileio import FolderInUse, folder_lock

    with folder_lock(tmp_path, "--workdir"), folder_lock(tmp_path, "--workdir"):  # nested: no second lock
        other = subprocess.run(
            [sys.executable, "-c", "from mcvd.fileio import FolderInUse, folder_lock\n"
                                   "try:\n"
                                   f"    with folder_lock({str(tmp_path)!r}, '--workdir', 'a test'): print('taken')\n"
                                   "except FolderInUse as err: print(err)"],
            capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == f"--workdir: {tmp_path} is in use by a test; wait for it to end, or choose " \
                                       f"another folder"
    with folder_lock(tmp_path, "--workdir"):  # released on leaving
        pass
    assert issubclass(FolderInUse, FileExistsError)


def test_a_file_system_that_cannot_lock_a_folder_runs_the_block_unguarded(tmp_path, monkeypatch):
    import errno
    import fcntl

    from mcvd.fileio import folder_lock

    def nfs_flock(fd, operation):  # NFS: a folder opened for reading takes no exclusive lock
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    ran = []
    with folder_lock(tmp_path, "--workdir"):
        ran.append(True)
    assert ran == [True]
