"""The scan store: one HDF5 file of finished points, plus a journal while a scan writes."""
from __future__ import annotations

import io
import json
import os
from contextlib import contextmanager

import h5py

from .atomic import LIBVER, as_path, atomic_file, check_target, file_lock, open_hdf5, stamp
from .storage import object_kind, write_record, write_result


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
        self.path = as_path(path, "store")
        self.journal = self.path.with_name(self.path.name + ".journal")
        self._lock = None
        self._definition = None  # to record at the next merge
        self._unmerged = 0
        self._merged = 0

    # ---- reading ---------------------------------------------------------------------
    def definition(self) -> dict:
        """The definition of the last scan written here (run, fixed, axes or points)."""
        with open_hdf5(self.path, what="store") as f:
            if object_kind(f) != "scan" or "scan" not in f.attrs:
                raise ValueError(f"store: {self.path} is not a scan store")
            try:
                return json.loads(f.attrs["scan"])
            except (TypeError, ValueError):
                raise ValueError(f"store: {self.path}: its scan definition is unreadable (corrupt?)") from None

    def _parts(self) -> list:
        return sorted(self.journal.glob("*.h5")) if self.journal.is_dir() else []

    def ids(self) -> set:
        """Ids of the finished points."""
        out = {p.stem for p in self._parts()}
        if self.path.exists():
            with open_hdf5(self.path, what="store") as f:
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
            files.append(open_hdf5(self.path, what="store"))
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
        check_target(self.path, "store", create_parents=True)
        if self.path.exists():
            with open_hdf5(self.path, what="store") as f:
                if object_kind(f) != "scan":
                    raise ValueError(f"store: {self.path} exists and is not a scan store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            for tmp in [*self.path.parent.glob(f".{self.path.name}.*.tmp*"), *self.journal.glob(".*.tmp")]:
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
        with atomic_file(self.path, locked=True, what="store") as f:
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
        lock = file_lock(self.path, wait=False, busy=f"store: {self.path} is being written by another scan")
        lock.__enter__()
        self._lock = lock

    def _release_lock(self):
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)
