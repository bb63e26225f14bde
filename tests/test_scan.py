"""Scans: grids, point ids, resume after kill -9, no mixing of settings, executors (threads, processes, dask)."""
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from conftest import alive, assert_same_trajectory, descendants

from onlinemdl.recipes import run_ode
from onlinemdl.scan import ScanResult, definition, load_scan, point_id, run_name, scan
from onlinemdl.scan_store import ScanStore
from onlinemdl.storage import save_trajectory
from onlinemdl.trajectory import Trajectory

TINY = dict(N=10, M=2, teacher="random", student="full", alpha_max=2.0, points=5)


def toy(rate, shift=0.0, delay=0.0):
    """A cheap deterministic run: a Trajectory with eps_g = exp(-rate alpha) + shift."""
    time.sleep(delay)
    alpha = np.linspace(0.0, 1.0, 4)
    eps = np.exp(-rate * alpha) + shift
    return Trajectory(alpha=alpha, steps=np.arange(4), eps_g=eps, Q=eps[:, None, None], R=eps[:, None, None],
                      T=np.ones((1, 1)), params={"rate": rate, "shift": shift})


def ragged(n, fail=False):
    """A dict result whose array grows with ``n``."""
    if fail:
        raise ValueError("fail was set")
    return {"value": float(n) ** 2, "vec": np.arange(n, dtype=float), "label": f"n={n}"}


def threads(n=2):
    return ThreadPoolExecutor(n)


def assert_same_scan(a: ScanResult, b: ScanResult):
    assert a.axes == b.axes and a.fixed == b.fixed and a.run == b.run
    assert np.array_equal(a.ids, b.ids) and a.done.all() and b.done.all()
    for idx in np.ndindex(a.shape):
        x, y = a.result(*idx), b.result(*idx)
        x.params.pop("wall_time", None)
        y.params.pop("wall_time", None)
        assert_same_trajectory(x, y)


def test_definition_checks_and_expansion():
    with pytest.raises(ValueError, match=r"grid\['eta'\] must be a list"):
        definition({"eta": 1.0}, "m:f")
    with pytest.raises(ValueError, match=r"grid\['eta'\] is empty"):
        definition({"eta": []}, "m:f")
    with pytest.raises(ValueError, match=r"grid\['eta'\] repeats a value"):
        definition({"eta": [1.0, 1.0]}, "m:f")
    with pytest.raises(ValueError, match=r"fixed: \['eta'\] also in the grid"):
        definition({"eta": [1.0]}, "m:f", fixed={"eta": 2.0})
    with pytest.raises(ValueError, match="grid repeats a point"):
        definition([{"a": 1}, {"a": 1}], "m:f")
    with pytest.raises(ValueError, match=r"grid\['x'\]\[0\]: scan parameters must be"):
        definition({"x": [object()]}, "m:f")
    with pytest.raises(ValueError, match="run must be a module-level function"):
        run_name(lambda x: x)
    d = definition({"eta": np.array([1.0, 2.0]), "K": range(1, 3)}, "m:f", fixed={"train": ("w",)})
    assert d == {"run": "m:f", "fixed": {"train": ["w"]}, "axes": {"eta": [1.0, 2.0], "K": [1, 2]}}
    assert type(d["axes"]["eta"][0]) is float and type(d["axes"]["K"][0]) is int


def test_point_id_is_stable_and_canonical():
    a = point_id("onlinemdl.scan:run_ode", {"eta": 1.0, "N": 30})
    assert a == point_id("onlinemdl.scan:run_ode", {"N": 30, "eta": 1.0})  # key order does not matter
    assert a != point_id("onlinemdl.scan:run_ode", {"N": 30, "eta": 1})  # int and float differ
    assert a != point_id("other:run", {"N": 30, "eta": 1.0})
    assert a == "41570e75a64ff0439d8edd99"  # the store format depends on this value


def test_scan_grid_results_and_explicit_points(tmp_path):
    res = scan({"rate": [0.0, 1.0, 2.0], "shift": [0.0, 0.5]}, run=toy, store=tmp_path / "s.h5", executor=threads(),
               progress=False)
    assert res.shape == (3, 2) and res.computed == 6 and res.done.all()
    eps = res["eps_g"]
    assert eps.shape == (3, 2, 4)
    alpha = np.linspace(0, 1, 4)
    for i, rate in enumerate([0.0, 1.0, 2.0]):
        for j, shift in enumerate([0.0, 0.5]):
            assert np.array_equal(eps[i, j], np.exp(-rate * alpha) + shift)
            assert res.points[i, j] == {"rate": rate, "shift": shift}
    assert res["status"][1, 1] == "ok" and res["shift"][2, 1] == 0.5  # a field and a parameter
    with pytest.raises(KeyError):
        res["nothing"]
    pts = scan([{"n": 3}, {"n": 1}], run=ragged, store=tmp_path / "r.h5", executor=threads(), progress=False)
    assert pts.axes == {"point": [0, 1]}
    assert np.array_equal(pts["value"], [9.0, 1.0])
    assert np.array_equal(pts["vec"], [[0.0, 1.0, 2.0], [0.0, np.nan, np.nan]], equal_nan=True)
    assert list(pts["label"]) == ["n=3", "n=1"]
    back = pts.result(1)
    assert back["value"] == 1.0 and back["label"] == "n=1" and np.array_equal(back["vec"], [0.0])
    assert load_scan(tmp_path / "r.h5").result(0)["label"] == "n=3"


def test_rerun_skips_extends_and_never_mixes(tmp_path):
    store = tmp_path / "s.h5"
    first = scan({"rate": [1.0, 2.0]}, run=toy, store=store, executor=threads(), progress=False)
    again = scan({"rate": [1.0, 2.0]}, run=toy, store=store, executor=threads(), progress=False)
    assert again.computed == 0 and np.array_equal(again["eps_g"], first["eps_g"])
    more = scan({"rate": [1.0, 2.0, 3.0]}, run=toy, store=store, executor=threads(), progress=False)
    assert more.computed == 1 and np.array_equal(more["eps_g"][:2], first["eps_g"])
    shifted = scan({"rate": [1.0, 2.0]}, run=toy, store=store, fixed={"shift": 1.0}, executor=threads(), progress=False)
    assert shifted.computed == 2  # a changed setting is a new point
    assert np.allclose(shifted["eps_g"], first["eps_g"] + 1.0)
    loaded = load_scan(store)
    assert loaded.fixed == {"shift": 1.0} and loaded.computed == 0
    with h5py.File(store, "r") as f:
        assert len(f["points"]) == 5  # every setting kept, each under its own id
    assert not store.with_name("s.h5.journal").exists()


def test_failure_keeps_finished_points_and_reports_the_point(tmp_path):
    store = tmp_path / "f.h5"
    with pytest.raises(RuntimeError, match=r"run failed at \{'n': 2, 'fail': True\}: ValueError: fail was set"):
        scan([{"n": 1}, {"n": 2, "fail": True}], run=ragged, store=store, executor=ThreadPoolExecutor(1),
             progress=False)
    res = load_scan(store)
    assert res.done.tolist() == [True, False] and res["value"][0] == 1.0 and np.isnan(res["value"][1])
    with pytest.raises(RuntimeError, match="fail was set"):
        scan([{"n": 2, "fail": True}], run=ragged, store=tmp_path / "none.h5", executor=threads(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]  # a scan that stored nothing wrote nothing
    with pytest.raises(ValueError, match="grid: test_scan:ragged: got an unexpected keyword argument 'm'"):
        scan([{"n": 1, "m": 1}], run=ragged, store=store, progress=False)


def test_store_guards(tmp_path):
    store = tmp_path / "g.h5"
    save_trajectory(toy(1.0), store)
    with pytest.raises(ValueError, match="exists and is not a scan store"):
        scan({"rate": [1.0]}, run=toy, store=store, progress=False)
    with pytest.raises(ValueError, match="is not a scan store"):
        load_scan(store)
    held = ScanStore(tmp_path / "busy.h5")
    held.open({"run": "m:f", "fixed": {}, "axes": {"x": [1]}})
    try:
        with pytest.raises(RuntimeError, match="is being written by another scan"):
            scan({"rate": [1.0]}, run=toy, store=tmp_path / "busy.h5", progress=False)
    finally:
        held.close()
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        scan({"rate": [1.0]}, run=toy, store=tmp_path / "w.h5", workers=0)


INTERRUPTED = textwrap.dedent("""
    import importlib.util, os, sys
    from concurrent.futures import ThreadPoolExecutor
    sys.path.insert(0, os.path.dirname(sys.argv[3]))
    spec = importlib.util.spec_from_file_location(sys.argv[2], sys.argv[3])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[sys.argv[2]] = mod
    spec.loader.exec_module(mod)
    from onlinemdl.scan import scan
    scan({"rate": [0.0, 1.0, 2.0, 3.0], "shift": [0.0, 1.0]}, run=mod.toy, store=sys.argv[1], fixed={"delay": 0.2},
         executor=ThreadPoolExecutor(1), progress=False)
""")


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(tmp_path):
    store = tmp_path / "k.h5"
    journal = tmp_path / "k.h5.journal"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(store), toy.__module__, __file__])
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(journal.glob("*.h5"))) < 3:
            time.sleep(0.005)
        proc.kill()
    finally:
        proc.wait(30)
    partial = load_scan(store)  # the file plus the journal left by the killed writer
    n_done = int(partial.done.sum())
    assert 3 <= n_done < 8
    grid = {"rate": [0.0, 1.0, 2.0, 3.0], "shift": [0.0, 1.0]}
    resumed = scan(grid, run=toy, store=store, fixed={"delay": 0.2}, executor=threads(4), progress=False)
    assert resumed.computed == 8 - n_done
    whole = scan(grid, run=toy, store=tmp_path / "whole.h5", fixed={"delay": 0.2}, executor=threads(4),
                 progress=False)
    assert_same_scan(resumed, whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.h5", "whole.h5"]  # journal, temp and lock files gone


@pytest.mark.slow
def test_process_pool_and_dask_equal_threads(tmp_path):
    distributed = pytest.importorskip("distributed")
    grid = {"eta": [0.5, 1.0]}
    local = scan(grid, store=tmp_path / "t.h5", fixed=TINY, executor=threads(), progress=False)
    assert local.run == "onlinemdl.recipes:run_ode"
    procs = scan(grid, store=tmp_path / "p.h5", fixed=TINY, workers=2, progress=False)
    assert_same_scan(procs, local)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        on_dask = scan(grid, store=tmp_path / "d.h5", fixed=TINY, executor=client, progress=False)
    assert on_dask.computed == 2
    assert_same_scan(on_dask, local)


def test_run_ode_records_its_spec():
    traj = run_ode(**TINY, eta=0.5)
    assert traj.params["spec"]["eta"] == 0.5 and traj.params["spec"]["student"] == "full"
    again = run_ode(**traj.params["spec"])
    assert np.array_equal(again.eps_g, traj.eps_g)
    with pytest.raises(ValueError, match='K must equal M = 2 for student="teacher-modes"'):
        run_ode(N=10, M=2, K=3)
    with pytest.raises(ValueError, match="teacher must be"):
        run_ode(teacher="nope")


@pytest.mark.slow
def test_interactive_run_function_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    def myrun(eta):
        raise AssertionError("must not run")

    myrun.__module__, myrun.__qualname__ = "__main__", "myrun"  # as defined in a notebook cell
    monkeypatch.setattr("onlinemdl.scan.start_method", lambda: "spawn")  # a notebook has threads: no fork
    monkeypatch.setattr(sys.modules["__main__"], "myrun", myrun, raising=False)
    monkeypatch.delattr(sys.modules["__main__"], "__file__", raising=False)
    store = tmp_path / "s.h5"
    with pytest.raises(ValueError, match="interactively"):
        scan({"eta": [1.0]}, run=myrun, store=str(store), progress=False)
    assert not store.exists()


# --------------------------------------------------------------------------------------
# Hardening (issue 10) and the default executor (issue 13)
# --------------------------------------------------------------------------------------
def test_bad_points_are_refused_before_any_worker_starts(tmp_path):
    store = tmp_path / "s.h5"
    for grid, fixed, message in [({"eta": ["5"]}, TINY, r"grid: point \{'eta': '5'\}: eta must be a finite number > 0"),
                                 ({"eta": [1.0]}, {**TINY, "alpha_max": "1e4"}, "alpha_max must be a finite number > 0"),
                                 ({"N": [10.5]}, {"M": 2}, "N must be an integer >= 1, got 10.5"),
                                 ({"student_seed": [-1]}, TINY, "student_seed must be an integer >= 0, got -1"),
                                 ({"method": ["foo"]}, TINY, "method must be one of 'auto'")]:
        with pytest.raises(ValueError, match=message):
            scan(grid, store=store, fixed=fixed, progress=False)
    with pytest.raises(ValueError, match=r"grid: point \{'seed': 1.5\}: seed must be an integer >= 0"):
        from onlinemdl.recipes import run_simulation
        scan({"seed": [1.5]}, run=run_simulation, store=store, fixed=TINY, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_or_a_corrupt_file_as_the_store_is_named(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(ValueError, match="store: .*adir is a directory"):
        scan({"rate": [1.0]}, run=toy, store=tmp_path / "adir", executor=threads(), progress=False)
    with pytest.raises(ValueError, match="adir: is a directory, not an HDF5 file"):
        load_scan(tmp_path / "adir")
    good = tmp_path / "good.h5"
    scan({"rate": [1.0, 2.0]}, run=toy, store=good, executor=threads(), progress=False)
    (tmp_path / "trunc.h5").write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"trunc\.h5: cannot be opened as HDF5, truncated or corrupt"):
        load_scan(tmp_path / "trunc.h5")
    with pytest.raises(ValueError, match=r"trunc\.h5: cannot be opened as HDF5"):
        scan({"rate": [1.0]}, run=toy, store=tmp_path / "trunc.h5", executor=threads(), progress=False)


@pytest.mark.slow  # importing xarray and pandas takes seconds
def test_to_xarray_and_to_dataframe(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("pandas")
    res = scan({"rate": [0.0, 1.0, 2.0], "shift": [0.0, 0.5]}, run=toy, store=tmp_path / "s.h5", executor=threads(),
               fixed={"delay": 0.0}, progress=False)
    ds = res.to_xarray(fields=("eps_g", "Q"))
    assert isinstance(ds, xr.Dataset)
    assert ds["eps_g"].dims == ("rate", "shift", "alpha") and list(ds["rate"].values) == [0.0, 1.0, 2.0]
    assert np.array_equal(ds["alpha"].values, np.linspace(0, 1, 4)) and ds.attrs["delay"] == 0.0
    assert np.array_equal(ds["eps_g"].values, res["eps_g"]) and ds["Q"].shape == (3, 2, 4, 1, 1)
    assert float(ds["eps_g"].sel(rate=2.0, shift=0.5, alpha=1.0)) == np.exp(-2.0) + 0.5
    assert list(ds["status"].values.ravel()) == ["ok"] * 6
    df = res.to_dataframe()
    assert len(df) == 6 * 4 and list(df.columns) == ["rate", "shift", "alpha", "status", "eps_g"]
    row = df[(df.rate == 1.0) & (df["shift"] == 0.0) & (df.alpha == 1.0)]
    assert float(row.eps_g.iloc[0]) == np.exp(-1.0)
    pts = scan([{"n": 3}, {"n": 1}], run=ragged, store=tmp_path / "r.h5", executor=threads(), progress=False)
    ds = pts.to_xarray()
    assert ds["value"].dims == ("point",) and list(ds["n"].values) == [3, 1] and list(ds["value"].values) == [9.0, 1.0]
    assert list(pts.to_dataframe()["value"]) == [9.0, 1.0]


@pytest.mark.slow
def test_to_xarray_of_simulations_with_replicas_and_a_diverged_point(tmp_path):
    pytest.importorskip("xarray")
    pytest.importorskip("pandas")
    from onlinemdl.recipes import run_simulation
    res = scan({"eta": [0.5, 1e4]}, run=run_simulation, store=tmp_path / "s.h5",
               fixed={**TINY, "replicas": 2, "threads": 1}, executor=threads(), progress=False)
    ds = res.to_xarray()
    assert ds["eps_g"].dims == ("eta", "replica", "alpha") and list(ds["status"].values) == ["ok", "diverged"]
    assert np.isfinite(ds["eps_g"].sel(eta=0.5).values).all() and np.isnan(ds["eps_g"].sel(eta=1e4).values[:, -1]).all()
    df = res.to_dataframe()
    assert {"eps_g", "eps_g_sem"} <= set(df.columns) and len(df) == 2 * ds.sizes["alpha"]
    assert np.isfinite(df[df.eta == 1e4].eps_g.iloc[0])  # all replicas diverged: the mean up to the divergence


def suicide(n):
    """A run whose point n = 2 kills its own worker process (as the OOM killer would)."""
    import os
    import signal
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"value": float(n)}


@pytest.mark.slow
def test_a_killed_worker_is_reported_as_such_with_the_points_kept(tmp_path):
    store = tmp_path / "w.h5"
    with pytest.raises(RuntimeError, match=r"a worker process died \(killed, or out of memory\?\) while running "
                                           r"\{'n': 2\}.* kept in .*w\.h5") as err:
        scan([{"n": 0}, {"n": 1}, {"n": 2}], run=suicide, store=store, workers=1, progress=False)
    assert "__main__" not in str(err.value)
    assert load_scan(store).done.tolist() == [True, True, False]


ORPHANS = textwrap.dedent("""
    import importlib.util, os, sys
    sys.path.insert(0, os.path.dirname(sys.argv[3]))
    spec = importlib.util.spec_from_file_location(sys.argv[2], sys.argv[3])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[sys.argv[2]] = mod
    spec.loader.exec_module(mod)
    from onlinemdl.scan import scan
    if __name__ == "__main__":
        scan({"rate": [float(r) for r in range(40)]}, run=mod.toy, store=sys.argv[1], fixed={"delay": 0.3},
             workers=2, progress=False)
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_a_scan_leaves_no_process_and_no_open_pipe(tmp_path):
    import os
    import signal
    script = tmp_path / "orphans.py"
    script.write_text(ORPHANS)
    store = tmp_path / "k.h5"
    proc = subprocess.Popen([sys.executable, str(script), str(store), toy.__module__, __file__],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list((tmp_path / "k.h5.journal").glob("*.h5"))) < 2:
            time.sleep(0.01)
        workers = descendants(proc.pid)
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        start = time.time()
        proc.stdout.read()  # returns once no process holds the pipe (a `scan | tail` ends)
        assert time.time() - start < 10
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists(f"/proc/{w}") and alive(w) for w in workers):
            time.sleep(0.05)
        assert not [w for w in workers if os.path.exists(f"/proc/{w}") and alive(w)]
    finally:
        proc.kill()
    assert load_scan(store).done.sum() >= 2
