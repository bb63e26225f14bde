"""HDF5 storage: trajectories, typed parameter records, atomic files and scan stores.

The schema is documented in ``docs/storage.md``. Every file and every object group carries
``format_version`` and ``onlinemdl_version`` attributes. Files are never modified in place:
a write goes to a fresh copy that replaces the file with ``os.replace``, so a reader, or a
writer killed at any instant, sees either the old file or the complete new one.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .trajectory import Trajectory

#: Version of the layout written here; readers refuse files from a newer layout.
FORMAT_VERSION = 1
#: Low bound HDF5 1.10: attributes of any size (dense attribute storage).
LIBVER = ("v110", "latest")
#: Arrays larger than this go to datasets even in attribute records (HDF5's compact attribute limit is 64 KiB).
MAX_ATTR_BYTES = 16384
#: Attribute that maps every key of a record to its type tag.
TYPES = "onlinemdl_types"
#: Names a record cannot use (the group's own attributes and the scan store's point parameters).
RESERVED = (TYPES, "onlinemdl_object", "format_version", "onlinemdl_version", "scan_point", ".")
_SCALARS = {bool: "bool", int: "int", float: "float", complex: "complex", str: "str"}


# --------------------------------------------------------------------------------------
# Typed records: dicts of Python/NumPy values, restored with their exact types
# --------------------------------------------------------------------------------------
def _encode(value, where):
    """``(tag, stored)``: the type tag and the HDF5-storable form of ``value``."""
    if isinstance(value, np.generic):
        if value.dtype.kind not in "biufc":
            raise ValueError(f"{where}: cannot store a NumPy scalar of dtype {value.dtype}")
        return "numpy", value
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufcS":
            return "ndarray", value
        if value.dtype.kind == "U":
            return f"ndarray:{value.dtype.str}", value.astype(object).astype(h5py.string_dtype())
        raise ValueError(f"{where}: cannot store an array of dtype {value.dtype}")
    if value is None:
        return "none", None
    if type(value) in _SCALARS:
        if type(value) is str or (type(value) is int and not -2**63 <= value < 2**63):
            return _SCALARS[type(value)], str(value)  # an int beyond 64 bits as its digits
        return _SCALARS[type(value)], np.asarray(value)[()]
    if isinstance(value, dict):
        return "dict", value
    if type(value) in (list, tuple):
        kind = type(value).__name__
        types = {type(v) for v in value}
        if not value:
            return f"{kind}:empty", None
        if len(types) == 1 and types <= {str, bool, int, float}:
            elem = _SCALARS[types.pop()]
            dtype = h5py.string_dtype() if elem == "str" else None
            try:
                arr = np.array(value, dtype=dtype)
            except OverflowError:  # ints beyond 64 bits go to JSON
                arr = np.array(None)
            if arr.dtype != object or elem == "str":
                return f"{kind}:{elem}", arr
        if kind == "list" and _plain(value):
            return "json", json.dumps(value)
        raise ValueError(f"{where}: cannot store this {kind} (mixed or nested types need plain JSON values in a list)")
    raise ValueError(f"{where}: cannot store a value of type {type(value).__name__}")


def _plain(value) -> bool:
    """Whether JSON restores ``value`` with its exact types (dicts with str keys, lists, scalars)."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) is list:
        return all(_plain(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False


def _strings(arr):
    return [s.decode() if isinstance(s, bytes) else str(s) for s in np.asarray(arr).ravel()]


def _decode(tag, stored, sub=None):
    if tag == "none":
        return None
    if tag in ("bool", "int", "float", "complex", "str"):
        return {"bool": bool, "int": int, "float": float, "complex": complex, "str": str}[tag](stored)
    if tag == "numpy":
        return stored
    if tag == "ndarray":
        return np.asarray(stored)
    if tag.startswith("ndarray:"):
        arr = np.asarray(stored)
        return np.array(_strings(arr), dtype=tag[8:]).reshape(arr.shape)
    if tag == "dict":
        return read_record(sub)
    if tag == "json":
        return json.loads(stored)
    kind, elem = tag.split(":")
    seq = list if kind == "list" else tuple
    if elem == "empty":
        return seq()
    if elem == "str":
        return seq(_strings(stored))
    return seq({"bool": bool, "int": int, "float": float}[elem](v) for v in np.asarray(stored))


def write_record(group: h5py.Group, record: dict, arrays: str = "attrs", where: str = "record"):
    """Write a dict of values into ``group`` so that :func:`read_record` restores it exactly.

    Scalars, strings, lists and tuples become attributes, arrays attributes (``arrays="attrs"``,
    up to ``MAX_ATTR_BYTES``) or datasets (``arrays="datasets"`` and larger arrays), nested dicts
    subgroups; None is recorded by its tag only.
    Supported: None, bool, int, float, complex, str, NumPy scalars and numeric, bool, bytes or
    str arrays, lists/tuples of one scalar type, lists of plain JSON values, dicts of these.
    """
    tags = {}
    for key, value in record.items():
        at = f"{where}[{key!r}]"
        if type(key) is not str or not key or "/" in key or key in RESERVED:
            raise ValueError(f"{at}: keys must be non-empty strings without '/', not one of {RESERVED}")
        tag, stored = _encode(value, at)
        tags[key] = tag
        if tag == "dict":
            write_record(group.create_group(key), value, arrays, at)
        elif tag.startswith("ndarray") and (arrays == "datasets" or stored.nbytes > MAX_ATTR_BYTES):
            group.create_dataset(key, data=stored)
        elif stored is not None:
            group.attrs[key] = stored
    group.attrs[TYPES] = json.dumps(tags)


def read_record(group: h5py.Group, keys=None) -> dict:
    """The dict written by :func:`write_record` (only ``keys``, when given)."""
    tags = json.loads(group.attrs[TYPES])
    out = {}
    for key in tags if keys is None else keys:
        tag = tags[key]
        if tag == "dict":
            out[key] = _decode(tag, None, group[key])
        elif key in group and isinstance(group[key], h5py.Dataset):
            out[key] = _decode(tag, group[key][()])
        else:
            out[key] = _decode(tag, group.attrs.get(key))
    return out


def record_keys(group: h5py.Group) -> list:
    """Keys of the record in ``group``."""
    return list(json.loads(group.attrs[TYPES]))


# --------------------------------------------------------------------------------------
# Trajectories
# --------------------------------------------------------------------------------------
def stamp(obj, kind: str):
    """Mark a file or group as an onlinemdl ``kind`` ("Trajectory", "record", "scan", "file")."""
    obj.attrs["onlinemdl_object"] = kind
    obj.attrs["format_version"] = FORMAT_VERSION
    obj.attrs["onlinemdl_version"] = __version__


def object_kind(group) -> str | None:
    """The ``onlinemdl_object`` of a group (None for a foreign group); refuses newer layouts."""
    kind = group.attrs.get("onlinemdl_object")
    if kind is not None and int(group.attrs.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{group.file.filename}{group.name}: format_version {group.attrs['format_version']} "
                         f"is newer than this onlinemdl ({FORMAT_VERSION}); upgrade onlinemdl")
    return kind


def write_trajectory(group: h5py.Group, traj: Trajectory):
    """Write ``traj`` into the empty ``group``: arrays as datasets, the rest as attributes,
    ``params`` as the attributes of the subgroup ``params``."""
    stamp(group, "Trajectory")
    values = {f.name: getattr(traj, f.name) for f in fields(traj) if f.name != "params"}
    write_record(group, values, "datasets", "Trajectory")
    write_record(group.create_group("params"), traj.params, "attrs", "params")


def read_trajectory(group: h5py.Group) -> Trajectory:
    """The Trajectory in ``group``."""
    if object_kind(group) != "Trajectory":
        raise ValueError(f"{group.file.filename}{group.name} is not a Trajectory group")
    return Trajectory(**read_record(group), params=read_record(group["params"]))


def write_result(group: h5py.Group, result):
    """Write a Trajectory, or a dict of values (kind "record"), into the empty ``group``."""
    if isinstance(result, Trajectory):
        write_trajectory(group, result)
    elif isinstance(result, dict):
        stamp(group, "record")
        write_record(group, result, "datasets", "result")
    else:
        raise ValueError(f"result must be a Trajectory or a dict, got {type(result).__name__}")


def read_result(group: h5py.Group):
    """The Trajectory or dict written by :func:`write_result`."""
    return read_trajectory(group) if object_kind(group) == "Trajectory" else read_record(group)


# --------------------------------------------------------------------------------------
# Files: atomic replacement
# --------------------------------------------------------------------------------------
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
def atomic_file(path, fresh=False):
    """Open a copy of the HDF5 file ``path`` (a new file if there is none, or with ``fresh``) for writing.

    On a clean exit the copy is flushed, synced and renamed over ``path`` (``os.replace``,
    atomic); on an exception it is removed and ``path`` is untouched. A writer killed
    meanwhile leaves ``path`` as it was, plus a hidden ``.NAME.*.tmp`` file next to it.
    """
    path = Path(path)
    exists = path.exists() and not fresh
    if exists:
        check_readable(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        if exists:
            shutil.copyfile(path, tmp)
            shutil.copymode(path, tmp)
        else:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        with h5py.File(tmp, "r+" if exists else "w", libver=LIBVER) as f:
            if not exists:
                stamp(f, "file")
            f.attrs["onlinemdl_version"] = __version__
            yield f
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        if tmp.exists():
            tmp.unlink()


def _place(parent: h5py.Group, name: str, overwrite: bool, write):
    """Write into a hidden group, then link it as ``name`` (readers never see it half done)."""
    if not name or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"name must be a relative group path, got {name!r}")
    if name in parent and not overwrite:
        raise ValueError(f"name: {parent.file.filename}{parent.name} already holds {name!r} (pass overwrite=True)")
    head, _, base = name.rpartition("/")
    where = parent.require_group(head) if head else parent
    tmp = f".{base}.partial"
    if tmp in where:
        del where[tmp]
    write(where.create_group(tmp))
    if base in where:
        del where[base]
    where.move(tmp, base)


def save_trajectory(traj: Trajectory, target, name: str = "trajectory", overwrite: bool = False):
    """Store ``traj`` as the group ``name`` of ``target`` (a path or an open h5py Group).

    A path is updated atomically (:func:`atomic_file`); other groups of the file are kept.
    """
    def write(group):
        write_trajectory(group, traj)

    if isinstance(target, h5py.Group):
        _place(target, name, overwrite, write)
    else:
        with atomic_file(target) as f:
            _place(f, name, overwrite, write)


def trajectory_names(group: h5py.Group) -> list:
    """Names of the Trajectory groups among the members of ``group``."""
    return [k for k, g in group.items() if isinstance(g, h5py.Group) and object_kind(g) == "Trajectory"]


def load_trajectory(source, name: str | None = None) -> Trajectory:
    """The Trajectory in ``source`` (a path or an h5py Group).

    ``name`` is its group path; by default ``source`` itself, or its only Trajectory member.
    """
    if not isinstance(source, h5py.Group):
        with h5py.File(check_readable(source), "r") as f:
            return load_trajectory(f, name)
    where = f"{source.file.filename}{source.name}"
    if name is not None:
        if name not in source:
            raise ValueError(f"name: {where} has no group {name!r} (it has {trajectory_names(source)})")
        return read_trajectory(source[name])
    if object_kind(source) == "Trajectory":
        return read_trajectory(source)
    names = trajectory_names(source)
    if len(names) != 1:
        raise ValueError(f"name: {where} holds {len(names)} trajectories {names}; pass name=")
    return read_trajectory(source[names[0]])


# --------------------------------------------------------------------------------------
# Scan stores: one HDF5 file, plus a journal of finished points while a scan writes
# --------------------------------------------------------------------------------------
def point_image(pid: str, params: dict, result) -> bytes:
    """One scan point as the bytes of a small HDF5 file: group ``pid`` holding the result
    (:func:`write_result`) and the point's parameters (subgroup ``scan_point``). Built by the
    worker that ran the point, so the process writing the store only copies bytes."""
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver=LIBVER) as f:
        group = f.create_group(pid)
        write_result(group, result)
        write_record(group.create_group("scan_point"), params, "attrs", "point")
    return buf.getvalue()


class ScanStore:
    """The results of a scan: the HDF5 file ``path`` and its journal ``path.journal/``.

    The file holds the last scan's definition (root attribute ``scan``, JSON) and one group
    ``points/<id>`` per finished point: the result (Trajectory or record) with the point's
    parameters in the subgroup ``scan_point``. While a scan runs, each finished point is
    written to its own small file ``<id>.h5`` in the journal (a temporary file renamed into
    place) and the journal is merged into ``path`` by :func:`atomic_file` after the first
    point, whenever it holds as many points as the file, and at the end (amortised O(1)
    per point); so a writer killed at any instant loses no finished point and corrupts
    nothing. Readers see the file and the journal together. One writer at a time (a lock
    file ``.NAME.lock`` guards it where ``fcntl`` exists).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.name + ".journal")
        self._lock = None
        self._definition = None  # to record at the next merge
        self._unmerged = 0
        self._merged = 0

    # ---- reading ---------------------------------------------------------------------
    def definition(self) -> dict:
        """The definition of the last scan written here (run, fixed, axes or points)."""
        with h5py.File(check_readable(self.path), "r") as f:
            if object_kind(f) != "scan":
                raise ValueError(f"store: {self.path} is not a scan store")
            return json.loads(f.attrs["scan"])

    def _parts(self) -> list:
        return sorted(self.journal.glob("*.h5")) if self.journal.is_dir() else []

    def ids(self) -> set:
        """Ids of the finished points."""
        out = {p.stem for p in self._parts()}
        if self.path.exists():
            with h5py.File(check_readable(self.path), "r") as f:
                out.update(f.get("points", {}))
        return out

    @contextmanager
    def groups(self):
        """Open the store; yields a dict ``id -> h5py.Group`` of every finished point."""
        files, out = [], {}
        try:
            for part in self._parts():  # parts first: a part merged meanwhile is then in the file
                try:
                    files.append(h5py.File(part, "r"))
                except OSError:  # merged and removed meanwhile, or never reached the disk
                    continue
                out.update(files[-1].items())
            files.append(h5py.File(check_readable(self.path), "r"))
            out.update(files[-1].get("points", {}).items())
            yield out
        finally:
            for f in files:
                f.close()

    # ---- writing ---------------------------------------------------------------------
    def open(self, definition: dict):
        """Start writing: take the lock and finish an interrupted writer's merge.

        ``definition`` is recorded with the first finished point (or at :meth:`close` if the file
        exists): a scan whose every point fails leaves no new file behind.
        """
        if self.path.exists():
            with h5py.File(check_readable(self.path), "r") as f:
                if object_kind(f) != "scan":
                    raise ValueError(f"store: {self.path} exists and is not a scan store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            for tmp in [*self.path.parent.glob(f".{self.path.name}.*.tmp"), *self.journal.glob(".*.tmp")]:
                tmp.unlink()  # left by a killed writer (we hold the lock: no live writer owns them)
            self._definition = definition
            if self._parts():
                self.merge()
        except BaseException:
            self._release_lock()
            raise

    def add(self, pid: str, image: bytes):
        """Journal one finished point, the bytes of :func:`point_image` (a temporary file renamed
        into place); merge when the journal is as large as the file."""
        self.journal.mkdir(exist_ok=True)
        tmp = self.journal / f".{pid}.tmp"
        try:
            tmp.write_bytes(image)
            os.replace(tmp, self.journal / f"{pid}.h5")
        finally:
            if tmp.exists():
                tmp.unlink()
        self._unmerged += 1
        if self._definition is not None or self._unmerged >= max(64, self._merged):
            self.merge()

    def merge(self):
        """Copy the journal (and a pending definition) into the file by one atomic replacement,
        then empty the journal."""
        parts = self._parts()
        if not parts and self._definition is None:
            return
        with atomic_file(self.path) as f:
            stamp(f, "scan")
            if self._definition is not None:
                f.attrs["scan"] = json.dumps(self._definition)
            points = f.require_group("points")
            for part in parts:
                try:
                    src = h5py.File(part, "r")
                except OSError:  # never reached the disk (OS crash): dropped, recomputed later
                    continue
                with src:
                    for pid in src:
                        if pid not in points:
                            src.copy(src[pid], points, name=pid)
            self._merged = len(points)
        for part in parts:
            part.unlink()
        self._definition = None
        self._unmerged = 0

    def close(self):
        """Merge the journal (recording the definition if the file exists), remove it, release the lock."""
        try:
            if self._parts() or (self._definition is not None and self.path.exists()):
                self.merge()
            if self.journal.is_dir():
                self.journal.rmdir()
        finally:
            self._definition = None
            self._release_lock()

    def _take_lock(self):
        try:
            import fcntl
        except ImportError:  # no fcntl (Windows): unguarded, one writer per store is then up to the user
            return
        lock = self.path.with_name(f".{self.path.name}.lock")
        while True:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RuntimeError(f"store: {self.path} is being written by another scan") from None
            try:
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:  # not unlinked by a writer just done
                    self._lock = (fd, lock)
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def _release_lock(self):
        if self._lock is not None:
            fd, lock = self._lock
            lock.unlink()
            os.close(fd)
            self._lock = None
