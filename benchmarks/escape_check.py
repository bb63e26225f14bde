"""Plateau lengths at finite N: the predicted distribution (``escape_distribution``) against the
exact Gram chain, for the classic committee K = M = 2 and 3 (v = vt = 1, orthonormal teacher,
small initial weights, eta = 1), 500 runs per case. Prints one Markdown row per case and saves
the measured escape times to ``--out`` (an .npz, for notebook 04's histograms).

A run's plateau length is :func:`~onlinemdl.ode.escape.escape_times` of its eps_g (centred
average over 1 / (2 mu), level half the saddle's eps_g); theory/finite_size.md section 7.

Run: python benchmarks/escape_check.py [--cases 2:100 3:100 2:1000 3:1000 2:10000 3:10000] [--threads 2]
(the N = 10^4 cases take about 10 and 20 CPU minutes).
"""
import argparse
import math
import time

import numpy as np

import onlinemdl as om
from onlinemdl.ode import OdeSystem, escape_distribution, escape_times

HEADER = ("| K = M | N | measured mean (s.e.) | predicted mean (s.e.) | measured sd | predicted sd | sd ratio |"
          " ODE | raw first crossing |\n|---|---|---|---|---|---|---|---|---|")


def case(K, N, replicas, threads):
    teacher = om.Teacher.orthonormal(N, K, seed=0, vt=np.ones(K))
    student = om.Student.full(N, K, seed=1, init="small", v=np.ones(K))
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    t0 = time.process_time()
    pred = escape_distribution(system, system.pack(state), N)
    t_pred = time.process_time() - t0
    alpha_max = 1.6 * pred["mean"] + 8 * pred["sd"]
    sim = om.simulate(student, teacher, eta=1.0, alpha=np.linspace(0, alpha_max, 1201), replicas=replicas,
                      seed=K * N, threads=threads)
    meas = escape_times(sim.alpha, sim.eps_g, pred["level_eps"], pred["window"])
    raw = escape_times(sim.alpha, sim.eps_g, pred["level_eps"], 0.0)
    n = np.isfinite(meas).sum()
    m, sd = np.nanmean(meas), np.nanstd(meas)
    row = (f"| {K} | {N} | {m:.1f} ({sd / math.sqrt(n):.1f}) | {pred['mean']:.1f} "
           f"({pred['sd'] / math.sqrt(pred['samples'].size):.1f}) | {sd:.1f} | {pred['sd']:.1f} | "
           f"{pred['sd'] / sd:.2f} | {pred['ode']:.1f} | {np.nanmean(raw):.1f} |")
    note = (f"  K = M = {K}, N = {N}: {replicas - n} runs not escaped by alpha = {alpha_max:.0f}; "
            f"prediction {t_pred:.1f} s CPU, alpha_ref = {pred['alpha_ref']:.1f}, window {pred['window']:.1f}")
    return row, note, meas, pred


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["2:100", "3:100", "2:1000", "3:1000", "2:10000", "3:10000"])
    ap.add_argument("--replicas", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="save measured and predicted escape times here (.npz)")
    args = ap.parse_args()
    print(HEADER, flush=True)
    notes, saved = [], {}
    for spec in args.cases:
        K, N = (int(x) for x in spec.split(":"))
        row, note, meas, pred = case(K, N, args.replicas, args.threads)
        print(row, flush=True)
        notes.append(note)
        saved[f"measured_{K}_{N}"], saved[f"predicted_{K}_{N}"] = meas, pred["samples"]
        saved[f"ode_{K}_{N}"] = pred["ode"]
    print("\n".join(notes))
    if args.out:
        np.savez(args.out, **saved)


if __name__ == "__main__":
    main()
