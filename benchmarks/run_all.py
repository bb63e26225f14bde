"""Every speed measurement of the package, with repeats: a Markdown table of medians and min-max
ranges (benchmarks/RESULTS.md, with the machine and the date) and the scaling figure (cost per step
against N and against K, benchmarks/scaling.png).

Single-threaded costs are CPU time (``time.process_time``) of interleaved runs, so that other
work on a shared machine disturbs them less; ratios are taken within one round (the two sides run
back to back) and summarised over the rounds. Absolute times belong to this machine; the ratios are
what carries over to another.

Run: python benchmarks/run_all.py [--repeat 5] [--quick] [--scripts]

``--quick`` measures fewer sizes (a smoke test); ``--scripts`` also runs bench_scan.py and
bench_modenet.py --quick and appends their own printed output.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ode  # noqa: E402
import bench_sgd  # noqa: E402

import onlinemdl as om  # noqa: E402


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}, "
            f"Numba {numba.__version__}, onlinemdl {om.__version__}; load average at start {load}")


class Table:
    def __init__(self):
        self.rows = []
        self.raw = {}

    def add(self, what, samples, unit, scale=1.0, note="", key=None):
        x = np.asarray(samples, dtype=float) * scale
        self.rows.append((what, float(np.median(x)), float(x.min()), float(x.max()), x.size, unit, note))
        if key:
            self.raw[key] = np.asarray(samples, dtype=float)
        print(f"  {what}: {fmt(np.median(x))} {unit} ({fmt(x.min())}-{fmt(x.max())}) {note}", flush=True)
        return float(np.median(x))

    def markdown(self):
        out = ["| measurement | median | min–max | n | |", "|---|---|---|---|---|"]
        for what, med, lo, hi, n, unit, note in self.rows:
            if what.startswith("##"):
                out.append(f"| **{what[2:].strip()}** | | | | |")
                continue
            out.append(f"| {what} | {fmt(med)} {unit} | {fmt(lo)}–{fmt(hi)} | {n} | {note} |")
        return "\n".join(out)

    def section(self, title):
        self.rows.append(("## " + title, 0, 0, 0, 0, "", ""))
        print(title, flush=True)


def fmt(x):
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def sgd_basics(tab, repeat, cores):
    N, K = 1000, 8
    teacher = om.Teacher.orthonormal(N, K, seed=0)
    student = om.Student.full(N, K, seed=1)
    steps = 20_000
    rng = np.random.default_rng(0)
    rows, inputs = bench_sgd.sweep_floor(N, K, K, steps, rng)
    e1, e3 = bench_sgd.engine_runs(N, K, steps)
    g1, g3 = bench_sgd.engine_runs(N, K, 10 * steps, method="gram")
    t = bench_sgd.interleaved({
        "numpy": lambda: bench_sgd.numpy_loop(student, teacher, 1.0, 1000, rng),
        "draw": lambda: bench_sgd.draw_floor(rng, N, steps), "rows": rows, "inputs": inputs,
        "e1": e1, "e3": e3, "g1": g1, "g3": g3}, repeat)
    a = {k: np.asarray(v) for k, v in t.items()}
    numpy = a["numpy"] / 1000
    draw = a["draw"] / steps
    floor = np.minimum(a["rows"], a["inputs"]) / steps
    ex = (a["e3"] - a["e1"]) / (2 * steps)
    gr = (a["g3"] - a["g1"]) / (20 * steps)
    tab.section("SGD, N = 1000, K = M = 8 full weights, one thread (CPU time)")
    tab.add("NumPy per-sample loop", numpy, "µs/step", 1e6)
    tab.add("floor: drawing the inputs alone", draw, "µs/step", 1e6)
    tab.add("floor: draw + one sweep (update and all fields)", floor, "µs/step", 1e6)
    tab.add("explicit engine", ex, "µs/step", 1e6, key="ex1000")
    tab.add("gram engine", gr, "µs/step", 1e6)
    tab.add("explicit / one-sweep floor", ex / floor, "x", note="target <= 1.5")
    tab.add("explicit / drawing alone", ex / draw, "x")
    tab.add("explicit speed-up over NumPy", numpy / ex, "x", note="target >= 3")
    tab.add("gram speed-up over NumPy", numpy / gr, "x", note="target >= 30")

    # replicas on threads: wall time of `cores` replicas on `cores` threads against one on one
    alpha = [0.0, steps / N]
    w = bench_sgd.interleaved({
        "one": lambda: om.simulate(student, teacher, eta=1.0, alpha=alpha, replicas=1, threads=1, method="explicit"),
        "all": lambda: om.simulate(student, teacher, eta=1.0, alpha=alpha, replicas=cores, threads=cores,
                                   method="explicit")}, repeat, clock=time.perf_counter)
    eff = np.asarray(w["one"]) * cores / np.asarray(w["all"]) / cores
    tab.add(f"explicit, {cores} replicas on {cores} threads: throughput / ({cores} x one thread)", eff, "x",
            note="wall time; target >= 0.85; meaningful only on an idle machine")


def sgd_scaling(tab, repeat, quick):
    out = {}
    Ns = (1000, 100_000) if quick else (1000, 10_000, 100_000, 1_000_000)
    tab.section("explicit engine against the one-sweep floor, K = M = 8 (CPU µs per step)")
    for N in Ns:
        r = bench_sgd.per_step_explicit(N, 8, repeat)
        out[("N", N)] = r
        tab.add(f"N = {N:,}: one-sweep floor", r["floor"], "µs", 1e6)
        tab.add(f"N = {N:,}: explicit", r["engine"], "µs", 1e6)
        tab.add(f"N = {N:,}: explicit / floor", r["engine"] / r["floor"], "x", note="target <= 1.5")
    Ks = (2, 8, 32) if quick else (2, 4, 8, 16, 32, 64)
    tab.section("explicit engine against K = M, N = 10,000 (CPU µs per step; the difference is within the noise here)")
    for K in Ks:
        r = bench_sgd.per_step_explicit(10_000, K, repeat)
        out[("K", K)] = r
        tab.add(f"K = {K}: explicit - floor", r["engine"] - r["floor"], "µs", 1e6)
        tab.add(f"K = {K}: explicit / floor", r["engine"] / r["floor"], "x")
    tab.section("gram against explicit, N = 1000, K = M (CPU µs per step)")
    for K in Ks:
        g = bench_sgd.per_step_gram(1000, K, repeat)
        r = bench_sgd.per_step_explicit(1000, K, repeat)
        e = r["engine"]
        out[("gram", K)], out[("ex", K)], out[("floor", K)] = g, e, r["floor"]
        tab.add(f"K = {K}: gram", g, "µs", 1e6)
        tab.add(f"K = {K}: explicit", e, "µs", 1e6)
        tab.add(f"K = {K}: explicit - one-sweep floor", e - r["floor"], "µs", 1e6)
        tab.add(f"K = {K}: gram / explicit", g / e, "x", note="target < 1")
    tab.section("gram engine against N, K = M = 8 (CPU µs per step)")
    for N in ((100, 1_000_000) if quick else (100, 1000, 10_000, 100_000, 1_000_000)):
        g = bench_sgd.per_step_gram(N, 8, repeat)
        out[("gramN", N)] = g
        tab.add(f"N = {N:,}: gram", g, "µs", 1e6)
    return out


def ode(tab, repeat, quick):
    out = {}
    tab.section("ODE (CPU time)")
    K = M = 8
    teacher = om.Teacher.orthonormal(1000, M, seed=0)
    student = om.Student.full(1000, K, init="small", seed=1, scale=2.0)
    rhs, y = bench_ode.rhs_case(K)
    op = student.order_parameters(teacher)
    numpy_rhs = lambda: bench_ode.numpy_rhs(op["Q"], op["R"], op["T"], student.v, teacher.vt, 1.0)  # noqa: E731
    nb = lambda: [rhs(y) for _ in range(200)]  # noqa: E731
    npy = lambda: [numpy_rhs() for _ in range(20)]  # noqa: E731
    t = bench_sgd.interleaved({"nb": nb, "np": npy}, repeat)
    a, b = np.asarray(t["nb"]) / 200, np.asarray(t["np"]) / 20
    tab.add("one RHS, K = M = 8: Numba", a, "µs", 1e6)
    tab.add("one RHS, K = M = 8: vectorised NumPy", b, "µs", 1e6)
    tab.add("one RHS, K = M = 8: NumPy / Numba", b / a, "x", note="target >= 20")
    for K in ((16, 32) if quick else (16, 32, 64)):
        c = bench_ode.rhs_cost(K, repeat)
        out[K] = np.asarray(c)
        tab.add(f"one RHS, K = M = {K}", c, "ms", 1e3)
    out[8] = a
    alpha = np.array([0.0, 1000.0])
    t = bench_sgd.interleaved({
        "ad": lambda: om.integrate(student, teacher, eta=1.0, alpha=alpha),
        "eu": lambda: om.integrate(student, teacher, eta=1.0, alpha=alpha, method="euler", step=0.01)},
        max(2, repeat // 2))
    tab.add("K = M = 8 to alpha = 1000: adaptive", t["ad"], "s")
    tab.add("K = M = 8 to alpha = 1000: Euler at 0.01", t["eu"], "s")
    tab.add("Euler / adaptive", np.asarray(t["eu"]) / np.asarray(t["ad"]), "x", note="target >= 30")
    mt = om.Teacher.modes(30, 8, seed=0)
    ms = om.Student.from_teacher_modes(mt, seed=1)
    t = bench_sgd.interleaved({"ad": lambda: om.integrate(ms, mt, eta=5.0, alpha_max=1e5)}, repeat)
    tab.add("published mode run (N = 30, K = M = 8, p = 3) to alpha = 1e5, adaptive", t["ad"], "s")
    return out


def end_to_end(tab):
    tab.section("published on-line run end to end (one run)")
    teacher = om.Teacher.modes(30, 8, seed=0)
    student = om.Student.from_teacher_modes(teacher, seed=1)
    t0, c0 = time.perf_counter(), time.process_time()
    om.integrate(student, teacher, eta=5.0, alpha_max=1e5)
    om.simulate(student, teacher, eta=5.0, alpha_max=1e5, replicas=4, seed=0, method="explicit")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tab.add("4 replicas x 3e6 explicit steps + ODE, wall time", [wall], "s", note="target < 60 s")
    tab.add("the same, CPU time of all threads", [cpu], "s", note="wall = CPU / cores on an idle machine")


def figure(path, sgd, ode_costs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def band(ax, x, samples, label, scale=1e6, **kw):
        med = np.array([np.median(s) for s in samples]) * scale
        lo = np.array([np.min(s) for s in samples]) * scale
        hi = np.array([np.max(s) for s in samples]) * scale
        ax.errorbar(x, med, yerr=[med - lo, hi - med], marker="o", capsize=3, label=label, **kw)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    Ns = sorted(k[1] for k in sgd if k[0] == "N")
    band(ax, Ns, [sgd[("N", N)]["draw"] for N in Ns], "drawing the inputs")
    band(ax, Ns, [sgd[("N", N)]["floor"] for N in Ns], "one-sweep floor")
    band(ax, Ns, [sgd[("N", N)]["engine"] for N in Ns], "explicit engine")
    Ng = sorted(k[1] for k in sgd if k[0] == "gramN")
    band(ax, Ng, [sgd[("gramN", N)] for N in Ng], "gram engine")
    ax.set(xscale="log", yscale="log", xlabel="N", ylabel="CPU µs per step", title="cost against N (K = M = 8)")
    ax.legend(fontsize=8)
    ax = axes[1]
    Ks = sorted(k[1] for k in sgd if k[0] == "gram")
    band(ax, Ks, [sgd[("ex", K)] for K in Ks], "explicit, N = 1000")
    band(ax, Ks, [sgd[("gram", K)] for K in Ks], "gram, N = 1000")
    band(ax, Ks, [sgd[("floor", K)] for K in Ks], "one-sweep floor, N = 1000", ls="--")
    k = np.array([Ks[0], Ks[-1]], dtype=float)
    g0 = np.median(sgd[("gram", Ks[-1])]) * 1e6
    ax.plot(k, g0 * (k / k[-1]) ** 2, "k:", label="∝ K²")
    ax.set(xscale="log", yscale="log", xlabel="K = M", ylabel="CPU µs per step", title="SGD cost against K")
    ax.legend(fontsize=8)
    ax = axes[2]
    Ko = sorted(ode_costs)
    band(ax, Ko, [ode_costs[K] for K in Ko], "one RHS", scale=1e3)
    k = np.array([Ko[0], Ko[-1]], dtype=float)
    ax.plot(k, np.median(ode_costs[Ko[-1]]) * 1e3 * (k / k[-1]) ** 4, "k:", label="∝ K⁴")
    ax.set(xscale="log", yscale="log", xlabel="K = M", ylabel="CPU ms", title="ODE right-hand side against K")
    ax.legend(fontsize=8)
    for ax, ticks in zip(axes, (None, Ks, Ko)):
        if ticks is not None:
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xticks(ticks, [str(k) for k in ticks])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def scripts():
    out = []
    for args in (["bench_scan.py"], ["bench_modenet.py", "--quick"]):
        print("running", " ".join(args), flush=True)
        r = subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], capture_output=True, text=True)
        out.append(f"### `python benchmarks/{' '.join(args)}`\n\n```\n{r.stdout.strip()}\n```")
    return "\n\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scripts", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--figure", default=str(HERE / "scaling.png"))
    args = ap.parse_args()
    cores = os.cpu_count()
    desc = machine()
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(desc, flush=True)
    t0 = time.perf_counter()
    tab = Table()
    sgd_basics(tab, args.repeat, cores)
    sgd = sgd_scaling(tab, args.repeat, args.quick)
    ode_costs = ode(tab, args.repeat, args.quick)
    end_to_end(tab)
    figure(args.figure, sgd, ode_costs)
    extra = scripts() if args.scripts else ""
    total = time.perf_counter() - t0
    text = (f"# Speed\n\nMeasured by `python benchmarks/run_all.py{' --quick' if args.quick else ''} --repeat "
            f"{args.repeat}` on {date}, in {total:.0f} s.\n\nMachine: {desc}.\n\n"
            "Medians over interleaved repeats (n), with the range; single-threaded costs are CPU time. "
            "Ratios are taken within one round and then summarised. Absolute times belong to this machine; "
            "the ratios, not the absolute times, carry over to another.\n\n"
            f"{tab.markdown()}\n\nScaling figure: `benchmarks/{Path(args.figure).name}`.\n")
    if extra:
        text += "\n## Other benchmarks (their own medians)\n\n" + extra + "\n"
    Path(args.out).write_text(text)
    print(f"wrote {args.out} and {args.figure} in {total:.0f} s")


if __name__ == "__main__":
    main()
