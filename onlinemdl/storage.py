"""HDF5 storage: typed parameter records and trajectory groups.

The schema is documented in ``docs/storage.md``. Files are written through
:func:`onlinemdl.atomic.atomic_file`: a reader, or a writer killed at any instant, sees
either the old file or the complete new one.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields

import h5py
import numpy as np

from .atomic import FORMAT_VERSION, atomic_file, check_target, open_hdf5, stamp
from .runsetup import check_flag
from .trajectory import Trajectory

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


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (a group path), got {type(name).__name__}")
    parts = name.split("/")
    if not name or name.startswith("/") or name.endswith("/") or "" in parts or any(
            p in (".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"name must be a relative group path of non-empty parts, none starting with '.', got {name!r}")
    return name


def _holds(parent: h5py.Group, name: str) -> bool:
    """Whether ``parent`` has a member at the path ``name`` (False where a part is not a group)."""
    head = parent
    for part in name.split("/"):
        if not isinstance(head, h5py.Group) or part not in head:
            return False
        head = head[part]
    return True


def _place(parent: h5py.Group, name: str, overwrite: bool, write, where: str):
    """Write into a hidden group, then link it as ``name`` (readers never see it half done)."""
    if _holds(parent, name) and not overwrite:
        raise ValueError(f"name: {where} already holds {name!r} (pass overwrite=True)")
    head, _, base = name.rpartition("/")
    try:
        where_group = parent.require_group(head) if head else parent
    except (TypeError, ValueError):
        raise ValueError(f"name: in {where}, {head!r} is not a group") from None
    tmp = f".{base}.partial"
    if tmp in where_group:
        del where_group[tmp]
    write(where_group.create_group(tmp))
    if base in where_group:
        del where_group[base]
    where_group.move(tmp, base)


def save_trajectory(traj: Trajectory, target: str | os.PathLike | h5py.Group, name: str = "trajectory",
                    overwrite: bool = False) -> None:
    """Store ``traj`` as the group ``name`` of ``target`` (a path or an open h5py Group).

    A path is updated atomically (:func:`atomic_file`); other groups of the file are kept, and
    writers of one file take turns, so concurrent saves to one file all keep their groups. The
    target is checked before anything is written: a directory, a missing folder, a file that is
    not HDF5 or a ``name`` already present (without ``overwrite``) is refused naming the path.
    """
    if not isinstance(traj, Trajectory):
        raise TypeError(f"traj must be a Trajectory, got {type(traj).__name__}")
    _check_name(name)
    check_flag("overwrite", overwrite)

    def write(group):
        write_trajectory(group, traj)

    if isinstance(target, h5py.Group):
        _place(target, name, overwrite, write, f"{target.file.filename}{target.name}")
        return
    path = check_target(target, "target")
    if path.exists() and not overwrite:
        with open_hdf5(path, what="target") as f:
            if _holds(f, name):
                raise ValueError(f"name: {path} already holds {name!r} (pass overwrite=True)")
    with atomic_file(path, what="target") as f:
        _place(f, name, overwrite, write, str(path))


def trajectory_names(group: h5py.Group) -> list:
    """Names of the Trajectory groups among the members of ``group``."""
    return [k for k, g in group.items() if isinstance(g, h5py.Group) and object_kind(g) == "Trajectory"]


def load_trajectory(source: str | os.PathLike | h5py.Group, name: str | None = None) -> Trajectory:
    """The Trajectory in ``source`` (a path or an h5py Group).

    ``name`` is its group path; by default ``source`` itself, or its only Trajectory member.
    A missing file gives FileNotFoundError, anything that is not a readable onlinemdl file (a
    folder, another format, a truncated or corrupt file) a ValueError naming the path.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str (a group path) or None, got {type(name).__name__}")
    if not isinstance(source, h5py.Group):
        with open_hdf5(source, what="source") as f:
            try:
                return load_trajectory(f, name)
            except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
                raise ValueError(f"{os.fspath(source)}: cannot be read as an onlinemdl file, truncated or corrupt? "
                                 f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    where = f"{source.file.filename}{source.name}"
    if name is not None:
        if not _holds(source, name):
            raise ValueError(f"name: {where} has no group {name!r} (it has {trajectory_names(source)})")
        return read_trajectory(source[name])
    if object_kind(source) == "Trajectory":
        return read_trajectory(source)
    names = trajectory_names(source)
    if len(names) != 1:
        raise ValueError(f"name: {where} holds {len(names)} trajectories {names}; pass name=")
    return read_trajectory(source[names[0]])
