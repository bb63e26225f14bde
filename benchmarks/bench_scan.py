"""Scan throughput: speed-up of a 64-point ODE scan on all cores over one core, and the store's cost.

(i)   64 small ODE runs (the paper's on-line setting: N = 30, K = M = 8, p = 3, only Xi trained,
      alpha to 1e5; 8 learning rates x 8 student seeds) through ``onlinemdl.scan`` with a warm process pool of 1 worker and of
      all cores: speed-up and parallel efficiency (target: speed-up >= 0.85 x cores);
(ii)  the same scan with the default executor, pool start-up included (what a user sees; target
      >= 0.9 x cores): its workers fork from the calling process on Linux (``scan.start_method``), so
      they start with everything imported; for comparison, a pool that spawns its workers (the
      default before, and still the default where fork is not used: each worker imports anew); and the
      default executor from a process that has already run an ODE (its workers inherit the loaded kernels;
      a cold process's workers each spend about 0.7 s loading Numba's compiler context and the kernels);
(iii) the store's overhead per point: encoding a result to HDF5 bytes (done by the worker), writing
      them to the journal and merging the journal into the file (done by the one process that
      writes the store), against the mean run time of a point.

Run: python benchmarks/bench_scan.py [--repeats R]   (R interleaved repeats, medians with min-max)
"""
import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from onlinemdl.recipes import run_ode
from onlinemdl.scan import definition, expand, load_scan, point_id, scan, start_method
from onlinemdl.scan_store import ScanStore, point_image

GRID = {"eta": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0], "student_seed": list(range(1, 9))}
FIXED = {"alpha_max": 1e5, "points": 100}


def _warm():
    run_ode(alpha_max=1.0, points=4)  # imports and loads the compiled kernels
    time.sleep(0.5)  # hold this worker so that the next warm-up lands on another one


def warm_pool(n):
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
    wait([pool.submit(_warm) for _ in range(n)])
    return pool


def timed_scan(store, **kw):
    t0 = time.perf_counter()
    res = scan(GRID, store=store, fixed=FIXED, progress=False, **kw)
    return time.perf_counter() - t0, res


def store_overhead(src, dst):
    """Per point: encoding a result (worker side), journalling it and merging the journal (store
    writer side), in seconds, and the mean run time of a point."""
    res = load_scan(src)
    results = [res.result(*i) for i in np.ndindex(res.shape)]
    defn = definition(GRID, res.run, FIXED)
    _, points, _ = expand(defn)
    ids = [point_id(res.run, p) for p in points]
    t0 = time.perf_counter()
    images = [point_image(i, p, r) for i, p, r in zip(ids, points, results)]
    t1 = time.perf_counter()
    st = ScanStore(dst)
    st.open(defn)
    for i, image in zip(ids, images):  # as in a scan: the first point is merged at once, the rest at close
        st.add(i, image)
    t2 = time.perf_counter()
    st.close()
    t3 = time.perf_counter()
    n = len(points)
    return (t1 - t0) / n, (t2 - t1) / n, (t3 - t2) / n, np.mean([r.params["wall_time"] for r in results])


def _stats(values):
    return f"{np.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})" if len(values) > 1 else \
        f"{values[0]:.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (default 1)")
    repeats = parser.parse_args().repeats
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = len(GRID["eta"]) * len(GRID["student_seed"])
    print(f"scan of {n} ODE runs (N = 30, K = M = 8, p = 3, Xi trained, alpha to 1e5), {cores} cores, "
          f"default executor starts its workers by {start_method()}; {repeats} repeat(s), medians")
    t1s, tns, colds, spawns = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(repeats):
            with warm_pool(1) as one:
                t1s.append(timed_scan(tmp / f"one{r}.h5", executor=one)[0])
            with warm_pool(cores) as many:
                tns.append(timed_scan(tmp / f"all{r}.h5", executor=many)[0])
            colds.append(timed_scan(tmp / f"cold{r}.h5")[0])
            t0 = time.perf_counter()
            with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as spawned:
                timed_scan(tmp / f"spawn{r}.h5", executor=spawned)
            spawns.append(time.perf_counter() - t0)
        t1, tn, cold, spawn = (float(np.median(v)) for v in (t1s, tns, colds, spawns))
        speedup = t1 / tn
        print(f"(i)   warm pools: 1 worker {_stats(t1s)}, {cores} workers {_stats(tns)} -> speed-up {speedup:.2f} "
              f"= {speedup / cores:.2f} x cores (target >= 0.85 x cores)")
        print(f"(ii)  default executor, pool start-up included: {_stats(colds)} -> speed-up {t1 / cold:.2f} "
              f"= {t1 / cold / cores:.2f} x cores (target >= 0.9 x cores); {cold / tn:.2f} x the warm pool's time")
        print(f"      a spawning pool, start-up included: {_stats(spawns)} -> {t1 / spawn / cores:.2f} x cores")
        _warm()  # the calling process has run an ODE (as a script that tries one point first): forked workers inherit it
        warm_parent = [timed_scan(tmp / f"warmparent{r}.h5")[0] for r in range(repeats)]
        tw = float(np.median(warm_parent))
        print(f"      default executor from a process that has already run an ODE: {_stats(warm_parent)} -> "
              f"{t1 / tw / cores:.2f} x cores (the workers inherit the loaded kernels)")
        encode, journal, merge, run = store_overhead(tmp / "all0.h5", tmp / "copy.h5")
        size = (tmp / "all0.h5").stat().st_size / n / 1024
        print(f"(iii) store per point: {1e3 * encode:.1f} ms encoding (in the worker, parallel), then in the "
              f"writing process {1e3 * journal:.2f} ms journal + {1e3 * merge:.2f} ms merge = "
              f"{100 * (journal + merge) / run:.1f} % of the mean run time ({1e3 * run:.0f} ms); "
              f"{size:.0f} KiB per point on disk")


if __name__ == "__main__":
    main()
