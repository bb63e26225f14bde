"""Atomic HDF5 files: a write goes to a fresh copy that replaces the file with ``os.replace``,
so a reader, or a writer killed at any instant, sees either the old file or the complete new
one. Every file and object group carries ``format_version`` and ``onlinemdl_version``
attributes (:func:`stamp`); the layout is documented in ``docs/storage.md``.
"""
from __future__ import annotations

import os
import secrets
import shutil
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


def check_readable(path) -> Path:
    """``path`` as a Path; FileNotFoundError or ValueError if it is not a readable HDF5 file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path}: not an HDF5 file")
    return path


@contextmanager
def staged_files(*paths):
    """Temporary files beside each of ``paths`` (hidden, same suffix, mode 0666 less the umask).

    On a clean exit every one is synced and replaces its target (``os.replace``, atomic); on an
    exception all of them are removed and the targets are untouched. Yields the list of
    temporary paths, in the order of ``paths``.
    """
    targets = [Path(p) for p in paths]
    tmps = [t.parent / f".{t.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{t.suffix}" for t in targets]
    try:
        for tmp in tmps:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
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
def atomic_file(path, fresh=False):
    """Open a copy of the HDF5 file ``path`` (a new file if there is none, or with ``fresh``) for writing.

    On a clean exit the copy is flushed, synced and renamed over ``path`` (``os.replace``,
    atomic); on an exception it is removed and ``path`` is untouched. A writer killed
    meanwhile leaves ``path`` as it was, plus a hidden ``.NAME.*.tmp.h5`` file next to it.
    """
    path = Path(path)
    exists = path.exists() and not fresh
    if exists:
        check_readable(path)
    with staged_files(path) as (tmp,):
        if exists:
            shutil.copyfile(path, tmp)
            shutil.copymode(path, tmp)
        with h5py.File(tmp, "r+" if exists else "w", libver=LIBVER) as f:
            if not exists:
                stamp(f, "file")
            f.attrs["onlinemdl_version"] = __version__
            yield f
