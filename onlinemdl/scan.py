"""Parameter scans: one run function over a grid of parameters, in parallel, into a resumable store.

A scan point is identified by a hash of the run function's qualified name and of all its
parameters (the fixed ones included), so a rerun skips the points already in the store and a
changed setting gives new points: results of different settings are never mixed. Only the
calling process writes the store (:class:`onlinemdl.scan_store.ScanStore`).
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .recipes import run_ode
from .scan_store import ScanStore, point_image
from .storage import object_kind, read_record, read_result, record_keys


# --------------------------------------------------------------------------------------
# Grids and point identities
# --------------------------------------------------------------------------------------
def _plain(value, where):
    """``value`` as exact JSON types: NumPy scalars to Python, arrays and tuples to lists."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(type(k) is str for k in value):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ValueError(f"{where}: scan parameters must be numbers, strings, None, or lists and dicts of them "
                     f"(str keys), got {type(value).__name__}")


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_name(run) -> str:
    """``module:qualname`` of a module-level function (ValueError otherwise)."""
    module, qual = getattr(run, "__module__", None), getattr(run, "__qualname__", None)
    if not callable(run) or not module or not qual or "<" in qual:
        raise ValueError("run must be a module-level function: it is sent to the workers by name and names "
                         f"the results (put settings in fixed=, not in a lambda or partial), got {run!r}")
    return f"{module}:{qual}"


def point_id(run: str, params: dict) -> str:
    """Stable id of one point: hash of the run's name and its canonical parameters."""
    return hashlib.sha256(_key([run, params]).encode()).hexdigest()[:24]


def definition(grid, run: str, fixed=None) -> dict:
    """Canonical description of a scan: ``{"run", "fixed", "axes" | "points"}``.

    ``grid`` is a dict ``name -> list of values`` (Cartesian product, first axis slowest)
    or a list of dicts (explicit points).
    """
    fixed = _plain(dict(fixed or {}), "fixed")
    if isinstance(grid, dict):
        if not grid:
            raise ValueError("grid must have at least one axis")
        axes = {}
        for name, values in grid.items():
            if type(name) is not str or not isinstance(values, (list, tuple, range, np.ndarray)):
                raise ValueError(f"grid[{name!r}] must be a list of values, got {values!r}")
            axes[name] = _plain(list(values), f"grid[{name!r}]")
            if not axes[name]:
                raise ValueError(f"grid[{name!r}] is empty")
            if len({_key(v) for v in axes[name]}) < len(axes[name]):
                raise ValueError(f"grid[{name!r}] repeats a value")
        out = {"run": run, "fixed": fixed, "axes": axes}
        names = set(axes)
    elif isinstance(grid, (list, tuple)) and grid and all(isinstance(p, dict) for p in grid):
        points = [_plain(p, f"grid[{i}]") for i, p in enumerate(grid)]
        if len({_key(p) for p in points}) < len(points):
            raise ValueError("grid repeats a point")
        out = {"run": run, "fixed": fixed, "points": points}
        names = set().union(*points)
    else:
        raise ValueError("grid must be a dict of lists (Cartesian product) or a non-empty list of dicts (points)")
    both = sorted(names & set(fixed))
    if both:
        raise ValueError(f"fixed: {both} also in the grid")
    return out


def expand(defn: dict):
    """``(axes, points, shape)`` of a definition: points (merged with the fixed ones) in C order."""
    fixed = defn["fixed"]
    if "axes" in defn:
        axes = defn["axes"]
        points = [{**fixed, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]
        return axes, points, tuple(len(v) for v in axes.values())
    return {"point": list(range(len(defn["points"])))}, [{**fixed, **p} for p in defn["points"]], (len(defn["points"]),)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------
def _stack(values, shape):
    """Stack per-point values into ``shape + value shape``; NaN where missing or shorter."""
    present = [np.asarray(v) for v in values if v is not None]
    if not present or any(a.dtype.kind not in "biufc" for a in present) or len({a.ndim for a in present}) > 1:
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out.reshape(shape) if present else np.full(shape, np.nan)
    trail = tuple(max(a.shape[d] for a in present) for d in range(present[0].ndim))
    if len(present) == len(values) and all(a.shape == trail for a in present):
        return np.stack(present).reshape(shape + trail)
    out = np.full((len(values),) + trail, np.nan, dtype=np.result_type(np.float64, *present))
    for i, v in enumerate(values):
        if v is not None:
            a = np.asarray(v)
            out[(i,) + tuple(slice(0, n) for n in a.shape)] = a
    return out.reshape(shape + trail)


@dataclass
class ScanResult:
    """A scan's results, indexed by the grid's axes (``res["eps_g"][i, j]``).

    Attributes
    ----------
    store : path of the store.
    run : the run function, ``module:qualname``.
    fixed : the fixed parameters.
    axes : ``name -> values`` for each axis (explicit points: one axis ``"point"``).
    points : (shape) object array, the full parameters of every point.
    ids : (shape) object array, the point ids (group names in the store).
    done : (shape) bool array, which points are in the store.
    computed : points computed by the :func:`scan` call that returned this (0 from :func:`load_scan`).
    """

    store: str
    run: str
    fixed: dict
    axes: dict
    points: np.ndarray
    ids: np.ndarray
    done: np.ndarray
    computed: int = 0

    @property
    def shape(self) -> tuple:
        return self.done.shape

    def __getitem__(self, name: str) -> np.ndarray:
        """A result field (e.g. "eps_g", "status") or a Trajectory parameter over the grid.

        Numeric values are stacked to ``shape + value shape``, NaN-padded where a point is
        missing or shorter (a diverged run); others come as an object array.
        """
        values, found = [], False
        with ScanStore(self.store).groups() as groups:
            for pid in self.ids.ravel():
                group = groups.get(pid)
                value = None
                if group is not None and name in record_keys(group):
                    value, found = read_record(group, [name])[name], True
                elif group is not None and object_kind(group) == "Trajectory" and name in record_keys(group["params"]):
                    value, found = read_record(group["params"], [name])[name], True
                values.append(value)
        if not found:
            raise KeyError(f"{name!r} is no field or parameter of the results in {self.store}")
        return _stack(values, self.shape)

    def result(self, *index):
        """The result (Trajectory or dict) at grid ``index``; None if not computed."""
        with ScanStore(self.store).groups() as groups:
            group = groups.get(self.ids[index])
            return None if group is None else read_result(group)


def load_scan(store="scan.h5") -> ScanResult:
    """The results of the last scan written to ``store``, as a :class:`ScanResult`."""
    s = ScanStore(store)
    defn = s.definition()
    axes, points, shape = expand(defn)
    ids = [point_id(defn["run"], p) for p in points]
    have = s.ids()

    def grid_array(seq):
        out = np.empty(len(seq), dtype=object)
        out[:] = seq
        return out.reshape(shape)

    return ScanResult(store=str(store), run=defn["run"], fixed=defn["fixed"], axes=axes, points=grid_array(points),
                      ids=grid_array(ids), done=np.array([i in have for i in ids]).reshape(shape))


# --------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------
def _check_signature(run, name, points):
    try:
        sig = inspect.signature(run)
    except (TypeError, ValueError):
        return
    for p in points:
        try:
            sig.bind(**p)
        except TypeError as err:
            raise ValueError(f"grid: {name}: {err}") from None


def scan(grid, run=None, store="scan.h5", *, fixed=None, executor=None, workers=None, progress=True) -> ScanResult:
    """Run ``run(**point)`` for every point of ``grid`` in parallel and store the results.

    Parameters
    ----------
    grid : dict ``name -> list of values`` (Cartesian product) or list of dicts (explicit points).
    run : module-level function returning a Trajectory or a dict of values (default :func:`run_ode`);
        worker processes import it by name, so a script must guard its main code with
        ``if __name__ == "__main__":`` and a function defined in a notebook needs a thread pool.
    store : HDF5 file of the results. Points already there are skipped (resume); points of a
        different ``run`` or ``fixed`` setting have other ids, so they are computed anew, never mixed.
    fixed : parameters common to all points.
    executor : any ``concurrent.futures.Executor`` or a ``distributed.Client``; default a
        process pool (spawn) with ``workers`` processes (default: all cores).
    progress : show a tqdm progress bar (points done, rate, time left).

    Returns
    -------
    ScanResult of the whole grid (``computed``: the points this call ran).
    """
    run = run_ode if run is None else run
    name = run_name(run)
    defn = definition(grid, name, fixed)
    axes, points, _ = expand(defn)
    _check_signature(run, name, points)
    if executor is None and run.__module__ == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
        raise ValueError(f"run: {run.__qualname__} is defined interactively (a notebook or the REPL), where the "
                         "default worker processes cannot import it; define it in a module, or pass "
                         "executor=concurrent.futures.ThreadPoolExecutor()")
    if workers is not None and (executor is not None or type(workers) is not int or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 and only goes with the default executor, got {workers!r}")
    labels = [{k: p[k] for k in p if k not in defn["fixed"]} for p in points]
    st = ScanStore(store)
    st.open(defn)
    try:
        have = st.ids()
        todo = [(point_id(name, p), p, lab) for p, lab in zip(points, labels) if point_id(name, p) not in have]
        with tqdm(total=len(points), initial=len(points) - len(todo), unit="point", desc=f"scan {st.path.name}",
                  disable=not progress) as bar:
            _execute(run, todo, st, bar, executor, workers)
    finally:
        st.close()
    res = load_scan(store)
    res.computed = len(todo)
    return res


def run_point(run, pid, params) -> bytes:
    """Worker side of a scan: ``run(**params)``, returned encoded (:func:`onlinemdl.storage.point_image`)."""
    return point_image(pid, params, run(**params))


def _execute(run, todo, store, bar, executor, workers):
    if not todo:
        return
    own = executor is None
    if own:
        executor = ProcessPoolExecutor(min(workers or os.cpu_count(), len(todo)),
                                       mp_context=multiprocessing.get_context("spawn"))
    elif hasattr(executor, "get_executor"):  # a distributed.Client
        executor = executor.get_executor()
    futures, ok = {}, False
    try:
        for pid, params, label in todo:
            futures[executor.submit(run_point, run, pid, params)] = (pid, label)
        for fut in as_completed(futures):
            pid, label = futures.pop(fut)
            try:
                image = fut.result()
            except BrokenProcessPool as err:
                raise RuntimeError(f"a worker process died at {label} ({err}); a script that runs a scan on the "
                                   "default process pool must guard its main code with "
                                   "'if __name__ == \"__main__\":'") from err
            except Exception as err:
                raise RuntimeError(f"run failed at {label}: {type(err).__name__}: {err}") from err
            store.add(pid, image)
            bar.update()
        ok = True
    finally:
        if not ok:  # keep what finished, drop the rest
            for fut, (pid, _) in futures.items():
                if not fut.cancel() and fut.done() and fut.exception() is None:
                    store.add(pid, fut.result())
        if own:
            executor.shutdown(wait=ok, cancel_futures=True)
