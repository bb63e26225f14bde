"""Atomic HDF5 files: a write goes to a fresh copy that replaces the file with ``os.replace``,
so a reader, or a writer killed at any instant, sees either the old file or the complete new
one. Writers of one file take turns (:func:`file_lock`), so concurrent updates never lose one
another's groups. Every file and object group carries ``format_version`` and
``onlinemdl_version`` attributes (:func:`stamp`); the layout is documented in ``docs/storage.md``.

Errors name the user's path, never a temporary file: a missing, unreadable or corrupt input
gives ``FileNotFoundError`` or ``ValueError`` (:func:`check_readable`, :func:`open_hdf5`), an
output that cannot be written is found before any work (:func:`check_target`).
"""
from __future__ import annotations

import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import h5py

from ._version import __version__

#: Version of the layout written here; readers refuse files from a newer layout.
FORMAT_VERSION = 1
#: Low bound HDF5 1.10: attributes of any size (dense attribute storage).
LIBVER = ("v110", "latest")


def stamp(obj, kind: str):
    """Mark a file or group as an onlinemdl ``kind`` ("Trajectory", "record", "scan", "file")."""
    obj.attrs["onlinemdl_object"] = kind
    obj.attrs["format_version"] = FORMAT_VERSION
    obj.attrs["onlinemdl_version"] = __version__


def _fsync(path, directory=False):
    if directory and not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def as_path(path, what: str = "path") -> Path:
    """``path`` (str or PathLike) as a Path; TypeError or ValueError naming ``what`` otherwise."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}")
    if str(os.fspath(path)) in ("", "."):
        raise ValueError(f"{what} must name a file, got {os.fspath(path)!r}")
    if "\0" in str(os.fspath(path)):
        raise ValueError(f"{what} must not contain a NUL character, got {os.fspath(path)!r}")
    return Path(path)


def check_readable(path, what: str = "path") -> Path:
    """``path`` as a Path; FileNotFoundError or ValueError if it is not an HDF5 file."""
    path = as_path(path, what)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not an HDF5 file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        ok = h5py.is_hdf5(path)
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({_reason(err)})") from None
    if not ok:
        raise ValueError(f"{path}: not an HDF5 file")
    return path


def _reason(err) -> str:
    text = str(getattr(err, "strerror", None) or err).split("\n")[0]
    return text.split("(")[0].strip() or type(err).__name__


def open_hdf5(path, mode: str = "r", what: str = "path") -> h5py.File:
    """The HDF5 file ``path`` opened with ``mode``; an unreadable, truncated or corrupt file gives a
    ValueError naming ``path`` (and a missing one a FileNotFoundError)."""
    path = check_readable(path, what)
    try:
        return h5py.File(path, mode)
    except OSError as err:
        raise ValueError(f"{path}: cannot be opened as HDF5, truncated or corrupt? ({_reason(err)})") from None


def check_target(path, what: str = "out", hdf5: bool = True, create_parents: bool = False) -> Path:
    """``path`` as a Path if a file can be written there, checked before any work is done.

    Refused with an error naming ``path``: an empty name, a directory, a parent that is a file
    or missing (unless ``create_parents``, then the nearest existing ancestor must be a
    directory), a folder where no file can be created (read-only), and with ``hdf5`` an
    existing file that is not a readable HDF5 file (it is updated, so it must be read first).
    """
    path = as_path(path, what)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a directory; give a file name")
    folder = path.parent
    while not folder.exists() and create_parents and folder != folder.parent:
        folder = folder.parent
    if not folder.exists():
        raise FileNotFoundError(f"{what}: {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{what}: {folder} is not a directory")
    probe = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp.probe"  # stale ones: remove_stale
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as err:
        raise PermissionError(f"{what}: {path}: cannot write in {folder} ({_reason(err)})") from None
    else:
        probe.unlink()
    if path.exists():
        if hdf5:
            with open_hdf5(path, what=what):
                pass
        elif not path.is_file():
            raise ValueError(f"{what}: {path} exists and is not a regular file")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale(path):
    """Remove temporary files that killed writers of ``path`` left beside it (``.NAME.<pid>.*.tmp*``
    of processes no longer alive)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp*"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


@contextmanager
def file_lock(path, wait: bool = True, busy: str | None = None):
    """Hold the exclusive lock of ``path``: the lock file ``.NAME.lock`` beside it (``fcntl.flock``;
    removed again on release). ``wait``: block until the holder is done; otherwise a RuntimeError
    ``busy`` (default "<path> is being written by another process"). Where ``fcntl`` is missing
    (Windows) writers are not guarded."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(busy or f"{path} is being written by another process") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:  # not unlinked by a holder just done
                break
        except FileNotFoundError:
            pass
        os.close(fd)
        time.sleep(0.001)
    try:
        yield
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def staged_files(*paths):
    """Temporary files beside each of ``paths`` (hidden, same suffix, mode 0666 less the umask).

    On a clean exit every one is synced and replaces its target (``os.replace``, atomic); on an
    exception all of them are removed and the targets are untouched. Yields the list of
    temporary paths, in the order of ``paths``. A folder where no file can be created gives a
    PermissionError (or FileNotFoundError) naming the target, not the temporary file.
    """
    targets = [Path(p) for p in paths]
    tmps = [t.parent / f".{t.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{t.suffix}" for t in targets]
    try:
        for tmp, target in zip(tmps, targets):
            if target.is_dir():
                raise ValueError(f"{target}: is a directory; give a file name")
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except OSError as err:
                raise type(err)(f"{target}: cannot write in {target.parent} ({_reason(err)})") from None
        yield tmps
        for tmp, target in zip(tmps, targets):
            _fsync(tmp)
            os.replace(tmp, target)
        for folder in {t.parent for t in targets}:
            _fsync(folder, directory=True)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def atomic_file(path, fresh=False, locked=False, what: str = "path"):
    """Open a copy of the HDF5 file ``path`` (a new file if there is none, or with ``fresh``) for writing.

    On a clean exit the copy is flushed, synced and renamed over ``path`` (``os.replace``,
    atomic); on an exception it is removed and ``path`` is untouched. Writers of one path take
    turns under its lock (:func:`file_lock`; ``locked``: the caller holds it already), so two
    processes updating one file both keep their groups. A writer killed meanwhile leaves
    ``path`` as it was, plus a hidden ``.NAME.*.tmp.h5`` file next to it, removed by the next writer.
    """
    path = check_target(path, what, hdf5=not fresh)
    with (_nothing() if locked else file_lock(path)):
        remove_stale(path)
        exists = path.exists() and not fresh
        if exists:
            open_hdf5(path).close()
        with staged_files(path) as (tmp,):
            if exists:
                shutil.copyfile(path, tmp)
                shutil.copymode(path, tmp)
            with h5py.File(tmp, "r+" if exists else "w", libver=LIBVER) as f:
                if not exists:
                    stamp(f, "file")
                f.attrs["onlinemdl_version"] = __version__
                yield f


@contextmanager
def _nothing():
    yield
