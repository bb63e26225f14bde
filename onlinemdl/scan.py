"""Parameter scans: one run function over a grid of parameters, in parallel, into a resumable store.

A scan point is identified by a hash of the run function's qualified name and of all its
parameters (the fixed ones included), so a rerun skips the points already in the store and a
changed setting gives new points: results of different settings are never mixed. Only the
calling process writes the store (:class:`onlinemdl.scan_store.ScanStore`).
"""
from __future__ import annotations

import gc
import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .recipes import check_params, run_ode
from .runsetup import check_flag
from .scan_store import ScanStore, point_image
from .storage import object_kind, read_record, read_result, record_keys
from .trajectory import Trajectory


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
    if fixed is not None and not isinstance(fixed, dict):
        raise TypeError(f"fixed must be a dict of parameters (name -> value), got {type(fixed).__name__}")
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

    # ---- xarray and pandas -------------------------------------------------------------
    def _series_layout(self):
        """``(trajectories, replicas)``: whether the results are Trajectories, and whether their series
        carry a replica axis (read from the first finished point)."""
        for idx in zip(*self.done.nonzero()):
            first = self.result(*idx)
            if isinstance(first, Trajectory):
                return True, first.eps_g.ndim == 2
            return False, False
        return False, False

    def to_xarray(self, fields=("eps_g",)):
        """The scan as an ``xarray.Dataset`` (needs xarray: ``pip install 'onlinemdl[xarray]'``).

        The grid axes are dimensions with their values as coordinates (explicit points: the
        dimension ``point``, every parameter that varies a coordinate along it). For Trajectory
        results each of ``fields`` (series such as "eps_g", "eps_test", "Q", or per-point values
        such as "nfev") is a variable; the series run along ``alpha`` (a coordinate, when every
        point has the same grid, else a dimension ``time`` with ``alpha`` a coordinate over the
        grid as well) and, for simulations, ``replica``; the point's ``status`` is always included.
        Dict results give one variable per key of ``fields`` (default: every scalar key).
        Points not computed, and series past a run's divergence, hold NaN. The fixed parameters,
        the run and the store are attributes.
        """
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("to_xarray needs xarray: pip install 'onlinemdl[xarray]'") from None
        dims, coords = self._grid_coords()
        trajectories, replicas = self._series_layout()
        data, extra = {}, {}
        if trajectories:
            alpha = self["alpha"]
            common = _common_grid(alpha, len(dims))
            tdim = "alpha" if common is not None else "time"
            if common is not None:
                extra["alpha"] = common
            else:
                extra["alpha"] = (dims + ["time"], alpha)
            for name in dict.fromkeys(("status",) + tuple(_as_tuple(fields))):
                value = self[name]
                lead = dims + (["replica"] if replicas and name in SERIES_FIELDS else []) + \
                    ([tdim] if name in SERIES_FIELDS or name in ("alpha", "steps") else [])
                trail = [f"{name}_{i}" for i in range(value.ndim - len(lead))]
                data[name] = (lead + trail, _plain_array(value))
        else:
            keys = _as_tuple(fields) if fields != ("eps_g",) else self._record_scalars()
            for name in keys:
                value = self[name]
                data[name] = (dims + [f"{name}_{i}" for i in range(value.ndim - len(dims))], _plain_array(value))
        ds = xr.Dataset(data, coords={**coords, **extra})
        ds.attrs.update(run=self.run, store=str(self.store), **{k: _attr(v) for k, v in self.fixed.items()})
        return ds

    def to_dataframe(self, fields=("eps_g",)):
        """The scan as a ``pandas.DataFrame`` in long form: one row per point and alpha (needs pandas).

        Columns: the grid's parameters (explicit points: ``point`` and every parameter that varies),
        ``alpha``, ``status`` and each of ``fields``; for simulations the replica mean over the
        replicas that did not diverge (:meth:`Trajectory.mean`) and its standard error
        ``<field>_sem``. Series past a divergence are NaN. Dict results give one row per point with
        their scalar values. Points not computed are left out.
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install pandas") from None
        names = self._varying()
        rows = []
        for idx in zip(*self.done.nonzero()):
            point = self.points[idx]
            base = {**({"point": int(idx[0])} if "point" in self.axes else {}), **{k: point.get(k) for k in names}}
            result = self.result(*idx)
            if not isinstance(result, Trajectory):
                keys = _as_tuple(fields) if fields != ("eps_g",) else [k for k, v in result.items() if np.ndim(v) == 0]
                rows.append({**base, **{k: result[k] for k in keys}})
                continue
            replicas = result.eps_g.ndim == 2
            mean, sem = (result.mean(), result.sem()) if replicas else (result, None)
            columns = {}
            for name in _as_tuple(fields):
                value = getattr(mean, name, None)
                if value is None and name in result.params:
                    value = np.full(result.alpha.size, result.params[name])
                if value is None:
                    raise KeyError(f"{name!r} is no field or parameter of the results in {self.store}")
                if np.ndim(value) != 1:
                    raise ValueError(f"fields: {name!r} is not a series over alpha; use to_xarray for it")
                columns[name] = value
                if sem is not None:
                    columns[f"{name}_sem"] = getattr(sem, name)
            for t in range(result.alpha.size):
                rows.append({**base, "alpha": float(result.alpha[t]), "status": result.status,
                             **{k: float(v[t]) for k, v in columns.items()}})
        return pd.DataFrame(rows)

    def _varying(self) -> list:
        if "point" not in self.axes:
            return list(self.axes)
        keys = dict.fromkeys(k for p in self.points.ravel() for k in p if k not in self.fixed)
        return list(keys)

    def _grid_coords(self):
        if "point" not in self.axes:
            return list(self.axes), {k: ([k], _plain_array(_objects(v))) for k, v in self.axes.items()}
        coords = {"point": ("point", np.arange(self.shape[0]))}
        for k in self._varying():
            coords[k] = ("point", _plain_array(_objects([p.get(k) for p in self.points.ravel()])))
        return ["point"], coords

    def _record_scalars(self) -> list:
        for idx in zip(*self.done.nonzero()):
            return [k for k, v in self.result(*idx).items() if np.ndim(v) == 0]
        return []


#: Trajectory fields that run over alpha (with a replica axis for simulations).
SERIES_FIELDS = ("eps_g", "Q", "R", "Rm", "S", "lam", "A", "v", "eps_test")


def _objects(seq):
    out = np.empty(len(seq), dtype=object)
    for i, v in enumerate(seq):
        out[i] = tuple(v) if isinstance(v, list) else v
    return out


def _as_tuple(fields):
    return (fields,) if isinstance(fields, str) else tuple(fields)


def _plain_array(arr):
    """An object array of numbers, strings or None as the narrowest plain NumPy array."""
    arr = np.asarray(arr)
    if arr.dtype != object:
        return arr
    flat = [v for v in arr.ravel() if v is not None and not (isinstance(v, float) and v != v)]
    if flat and all(isinstance(v, str) for v in flat):
        return np.array(["" if v is None or (isinstance(v, float) and v != v) else v for v in arr.ravel()],
                        dtype=str).reshape(arr.shape)
    if flat and all(isinstance(v, (bool, int, float, np.number)) for v in flat):
        return np.array([np.nan if v is None else v for v in arr.ravel()], dtype=float).reshape(arr.shape) \
            if any(v is None for v in arr.ravel()) else np.array(arr.tolist())
    return arr


def _common_grid(alpha, ngrid):
    """The one alpha grid every point shares (each point's grid a prefix of the longest), else None."""
    rows = alpha.reshape(-1, alpha.shape[-1])
    longest = None
    for row in rows:
        n = int(np.sum(np.isfinite(row)))
        if longest is None or n > np.sum(np.isfinite(longest)):
            longest = row
    if longest is None:
        return None
    for row in rows:
        n = int(np.sum(np.isfinite(row)))
        if n and not np.array_equal(row[:n], longest[:n]):
            return None
    return longest


def _attr(value):
    """A fixed parameter as an attribute value xarray and netCDF accept (None and lists as text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


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
        worker processes find it by name: where they are spawned (not Linux, or a caller with other
        threads, such as a notebook) a script must guard its main code with
        ``if __name__ == "__main__":`` and a function defined in a notebook needs a thread pool.
        The points are type-checked first (for :func:`run_ode` and :func:`run_simulation` every
        parameter, else against the signature): a bad point is refused before any worker starts.
    store : HDF5 file of the results. Points already there are skipped (resume); points of a
        different ``run`` or ``fixed`` setting have other ids, so they are computed anew, never mixed.
    fixed : parameters common to all points.
    executor : any ``concurrent.futures.Executor`` or a ``distributed.Client``; default a
        process pool with ``workers`` processes (default: all cores), forked from this process on
        Linux when it runs no other thread (:func:`start_method`; the workers start at once), else
        spawned. Its workers exit when this process is killed.
    progress : show a tqdm progress bar (points done, rate, time left).

    Returns
    -------
    ScanResult of the whole grid (``computed``: the points this call ran).
    """
    run = run_ode if run is None else run
    name = run_name(run)
    check_flag("progress", progress)
    defn = definition(grid, name, fixed)
    axes, points, _ = expand(defn)
    _check_signature(run, name, points)
    labels = [{k: p[k] for k in p if k not in defn["fixed"]} for p in points]
    for p, lab in zip(points, labels):
        try:
            check_params(run, p)
        except (TypeError, ValueError) as err:
            raise ValueError(f"grid: point {lab or p}: {err}") from None
    if workers is not None and (executor is not None or type(workers) is not int or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 and only goes with the default executor, got {workers!r}")
    method = start_method() if executor is None else None
    if method == "spawn" and run.__module__ == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
        raise ValueError(f"run: {run.__qualname__} is defined interactively (a notebook or the REPL), where the "
                         "default worker processes cannot import it; define it in a module, or pass "
                         "executor=concurrent.futures.ThreadPoolExecutor()")
    st = ScanStore(store)
    st.open(defn)
    try:
        have = st.ids()
        todo = [(point_id(name, p), p, lab) for p, lab in zip(points, labels) if point_id(name, p) not in have]

        def bar():  # no tqdm at all without progress: even a disabled bar starts tqdm's monitor thread for good
            if not progress:
                return _NoBar()
            return tqdm(total=len(points), initial=len(points) - len(todo), unit="point", desc=f"scan {st.path.name}")

        _execute(run, todo, st, bar, executor, workers, method)
    finally:
        st.close()
    res = load_scan(store)
    res.computed = len(todo)
    return res


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def close(self):
        pass


def start_method() -> str:
    """How the default executor starts its workers: "fork" on Linux from a process with no other
    thread (the workers start at once, with everything imported), else "spawn" (each worker
    imports the package and the run function anew: about a second each)."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods() \
            and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _watch_parent(parent: int):
    """Worker initializer: exit as soon as the scan's process is gone (killed), instead of waiting
    for work forever while holding its pipes open."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="onlinemdl-watch-parent", daemon=True).start()


def run_point(run, pid, params) -> bytes:
    """Worker side of a scan: ``run(**params)``, returned encoded (:func:`onlinemdl.storage.point_image`)."""
    return point_image(pid, params, run(**params))


def _execute(run, todo, store, bar, executor, workers, method):
    if not todo:
        bar().close()
        return
    own = executor is None
    if own:
        sys.stdout.flush()  # a forked worker must not repeat buffered output
        sys.stderr.flush()
        executor = ProcessPoolExecutor(min(workers or os.cpu_count() or 1, len(todo)),
                                       mp_context=multiprocessing.get_context(method),
                                       initializer=_watch_parent, initargs=(os.getpid(),))
    elif hasattr(executor, "get_executor"):  # a distributed.Client
        executor = executor.get_executor()
    futures, ok, finished = {}, False, 0
    try:
        frozen = own and method == "fork"
        if frozen:  # forked workers leave the inherited objects alone: no garbage collection of them, no copy-on-write
            gc.freeze()
        try:
            for pid, params, label in todo:  # before the bar: a fork pool starts its workers here, with no thread about
                futures[executor.submit(run_point, run, pid, params)] = (pid, label)
        finally:
            if frozen:
                gc.unfreeze()
        with bar() as progress:
            for fut in as_completed(futures):
                pid, label = futures.pop(fut)
                try:
                    image = fut.result()
                except BrokenProcessPool as err:
                    raise RuntimeError(_died(label, finished, len(todo), store.path, own and method == "spawn")) \
                        from err
                except Exception as err:
                    raise RuntimeError(f"run failed at {label}: {type(err).__name__}: {err}") from err
                store.add(pid, image)
                finished += 1
                progress.update()
        ok = True
    finally:
        if not ok:  # keep what finished, drop the rest
            for fut, (pid, _) in futures.items():
                if not fut.cancel() and fut.done() and fut.exception() is None:
                    store.add(pid, fut.result())
        if own:
            executor.shutdown(wait=ok, cancel_futures=True)


def _died(label, finished, total, path, spawned) -> str:
    text = (f"a worker process died (killed, or out of memory?) while running {label}; the {finished} points "
            f"finished in this run are kept in {path}, {total - finished} are not computed: run the scan again "
            "to compute them")
    if spawned and finished == 0 and hasattr(sys.modules["__main__"], "__file__"):
        text += ("; if no worker ever finished a point, check that the script guards its main code with "
                 "'if __name__ == \"__main__\":'")
    return text
