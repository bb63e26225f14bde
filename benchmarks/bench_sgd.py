"""SGD engine speed, printed as ratios measured side by side in one run (medians of repeats).

For N = 1000, K = M = 8 full weights and for the mode student (p = 7, only Xi trained):
steps per second of a plain per-sample NumPy loop, the explicit engine on one core and on
all cores (one replica per core), the gram engine, and two floors: drawing the N Gaussian
inputs alone (a numpy.random.Generator inside Numba), and the one-sweep floor (draw the next
input and, in one pass over contiguous weights, apply this step's update to the K trained rows
and accumulate the next fields of all K + M rows; the cheaper of two layouts). Then the explicit
engine against the one-sweep floor for N = 1e3..1e6 (K = M = 8) and for K = 2..64 (N = 1e4);
the gram engine against the explicit one for K = 2..64 (N = 1000) and its cost against N; the
published on-line run end to end (4 replicas of 3e6 steps + ODE).

Single-threaded costs are CPU time (``time.process_time``), so that a busy machine disturbs them
less; the engines' cost per step is the difference of two run lengths (start-up and recording
cancel). ``benchmarks/run_all.py`` runs these with repeats and writes benchmarks/RESULTS.md.

Run: python benchmarks/bench_sgd.py
"""
import os
import time

import numpy as np
from numba import njit, uint64

import onlinemdl as om

TILE = 512


@njit(cache=True)
def draw_floor(rng, N, steps):
    acc = 0.0
    for _ in range(steps):
        for _ in range(N):
            acc += rng.standard_normal()
    return acc


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"})
def _floor_tile(W, B, c, xo, xn, s, u, j0, j1):
    for a in range(W.shape[0]):
        ca = c[a]
        acc = 0.0
        for j in range(uint64(j0), uint64(j1)):
            w = W[a, j] - ca * xo[j]
            W[a, j] = w
            acc += w * xn[j]
        s[a] += acc
    for n in range(B.shape[0]):
        acc = 0.0
        for j in range(uint64(j0), uint64(j1)):
            acc += B[n, j] * xn[j]
        u[n] += acc


@njit(cache=True)
def sweep_floor_rows(rng, W, B, steps):
    """One-sweep floor, weights stored row by row (K, N) and (M, N), the sweep tiled by inputs:
    per step, draw x and, tile by tile, w_a -= c_a x_old, s_a += w_a . x, u_n += B_n . x."""
    K, N = W.shape
    xo, xn = np.zeros(N), np.empty(N)
    s, u, c = np.zeros(K), np.zeros(B.shape[0]), np.full(K, 1e-3)
    for _ in range(steps):
        s[:] = 0.0
        u[:] = 0.0
        for j0 in range(0, N, TILE):
            j1 = min(N, j0 + TILE)
            for j in range(j0, j1):
                xn[j] = rng.standard_normal()
            _floor_tile(W, B, c, xo, xn, s, u, j0, j1)
        xo, xn = xn, xo
        for a in range(K):
            c[a] = 1e-3 * s[a] / N
    return s[0] + u[0]


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"})
def sweep_floor_inputs(rng, Wim, K, steps):
    """One-sweep floor, weights stored input-major (N, K + M): per input j, draw x_j, update the
    K trained entries and accumulate all K + M fields."""
    N, n = Wim.shape
    xo = np.zeros(N)
    f, c = np.zeros(n), np.full(K, 1e-3)
    for _ in range(steps):
        f[:] = 0.0
        for j in range(N):
            x = rng.standard_normal()
            xj = xo[j]
            xo[j] = x
            for a in range(K):
                w = Wim[j, a] - c[a] * xj
                Wim[j, a] = w
                f[a] += w * x
            for a in range(K, n):
                f[a] += Wim[j, a] * x
        for a in range(K):
            c[a] = 1e-3 * f[a] / N
    return f[0]


def cpu_time(fn):
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def sweep_floor(N, K, M, steps, rng):
    """Callables of the two one-sweep floors for ``steps`` steps (the floor is the cheaper)."""
    W, B, Wim = rng.standard_normal((K, N)), rng.standard_normal((M, N)), rng.standard_normal((N, K + M))
    return (lambda: sweep_floor_rows(rng, W, B, steps)), (lambda: sweep_floor_inputs(rng, Wim, K, steps))


def engine_runs(N, K, steps, method="explicit", M=None):
    """Callables running one replica of the engine's kernel (as ``simulate`` calls it) for ``steps``
    and ``3 steps``: the cost per step is (t3 - t1) / (2 steps), start-up and recording cancel."""
    from onlinemdl.dynamics import Dynamics
    from onlinemdl.gaussian import joint_covariance
    from onlinemdl.sgd.kernels import explicit_replica, gram_replica
    M = M or K
    teacher = om.Teacher.random(N, M, seed=0)
    student = om.Student.full(N, K, seed=1, scale=0.5)
    rates, flags = Dynamics.from_networks(student, teacher, eta=0.5).pack()
    op = student.order_parameters(teacher)
    Gfull = np.ascontiguousarray(joint_covariance(op["T"], op["R"].T, op["Q"]))
    Xtest = np.empty((0, N))

    def run(n):
        record = np.array([n], dtype=np.int64)

        def go():
            out = (np.empty((1, K, K)), np.empty((1, K, M)), np.empty((1, K, K)), np.empty((1, K)), np.empty((1, K)),
                   np.empty(1))
            rng = np.random.default_rng(0)
            if method == "explicit":
                return explicit_replica(student.W.copy(), teacher.B, np.eye(K), np.ones(K), student.v.copy(),
                                        teacher.vt, rates, flags, record, 1e300, Xtest, rng, out)
            return gram_replica(Gfull.copy(), N, np.eye(K), np.ones(K), student.v.copy(), teacher.vt, rates, flags,
                                record, 1e300, rng, out)
        return go
    return run(steps), run(3 * steps)


def numpy_loop(student, teacher, eta, steps, rng):
    """The per-sample NumPy loop a researcher writes first (full or Xi-only mode student, erf)."""
    from scipy.special import erf
    N = student.N
    B, vt, v = teacher.B, teacher.vt, student.v
    modes = student.is_modes
    W = (student.Xi.T if modes else student.W).copy()
    C = student.A * student.lam if modes else np.eye(student.K)
    for _ in range(steps):
        x = rng.standard_normal(N)
        s = W @ x / np.sqrt(N)
        h = C @ s
        u = B @ x / np.sqrt(N)
        err = v @ erf(h / np.sqrt(2)) - vt @ erf(u / np.sqrt(2))
        delta = v * np.sqrt(2 / np.pi) * np.exp(-h**2 / 2) * err
        W -= eta * np.outer(C.T @ delta, x) / np.sqrt(N)
    return W


def interleaved(fns, repeat=3, clock=time.process_time):
    """Times of each callable in ``fns`` (name -> callable), one warm-up call each, then ``repeat``
    rounds in which every callable runs once: name -> list of seconds."""
    for fn in fns.values():
        fn()
    out = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            out[name].append(clock() - t0)
    return out


def median(fn, repeat=3, clock=time.perf_counter):
    return float(np.median(interleaved({"f": fn}, repeat, clock)["f"]))


def per_step_explicit(N, K, repeat=5, M=None):
    """Interleaved samples (seconds per step) of the draw floor, the two one-sweep floors and the
    explicit engine (difference of two run lengths), K trained rows and M = K teacher rows."""
    M = M or K
    steps = max(6, int(0.08 / (N * (10e-9 + 2e-9 * (K + M)))))
    rng = np.random.default_rng(0)
    rows, inputs = sweep_floor(N, K, M, steps, rng)
    e1, e3 = engine_runs(N, K, steps, M=M)
    t = interleaved({"draw": lambda: draw_floor(rng, N, steps), "rows": rows, "inputs": inputs, "e1": e1, "e3": e3},
                    repeat)
    floor = np.minimum(t["rows"], t["inputs"]) / steps
    engine = (np.array(t["e3"]) - np.array(t["e1"])) / (2 * steps)
    return dict(draw=np.array(t["draw"]) / steps, floor=floor, rows=np.array(t["rows"]) / steps,
                inputs=np.array(t["inputs"]) / steps, engine=engine)


def per_step_gram(N, K, repeat=5):
    """Interleaved samples (seconds per step) of the gram engine, K = M."""
    steps = max(2000, int(2e5 / K))
    g1, g3 = engine_runs(N, K, steps, method="gram")
    t = interleaved({"g1": g1, "g3": g3}, repeat)
    return (np.array(t["g3"]) - np.array(t["g1"])) / (2 * steps)


def rates(label, student, teacher, eta, cores):
    N = student.N
    steps = 20_000
    alpha = [0.0, steps / N]
    rng = np.random.default_rng(0)
    t_np = median(lambda: numpy_loop(student, teacher, eta, 2000, rng), clock=time.process_time) / 2000
    t_floor = median(lambda: draw_floor(rng, N, steps), clock=time.process_time) / steps
    t_one = median(lambda: om.simulate(student, teacher, eta=eta, alpha=alpha, replicas=1, threads=1, method="explicit"),
                   clock=time.process_time) / steps
    t_wall = median(lambda: om.simulate(student, teacher, eta=eta, alpha=alpha, replicas=1, threads=1,
                                        method="explicit")) / steps
    t_all = median(lambda: om.simulate(student, teacher, eta=eta, alpha=alpha, replicas=cores, threads=cores,
                                        method="explicit")) / (steps * cores)
    t_gram = median(lambda: om.simulate(student, teacher, eta=eta, alpha=[0.0, 10 * steps / N], replicas=1,
                                        method="gram"), clock=time.process_time) / (10 * steps)
    print(f"{label}")
    print(f"  numpy loop      {1 / t_np:12,.0f} steps/s")
    print(f"  floor (draws)   {1 / t_floor:12,.0f} steps/s")
    print(f"  explicit 1 core {1 / t_one:12,.0f} steps/s   {t_np / t_one:5.1f}x numpy (target >= 3)   "
          f"{t_one / t_floor:4.2f}x the draws alone (target <= 2)")
    print(f"  explicit {cores} cores{1 / t_all:12,.0f} steps/s   {t_wall / t_all:5.2f}x one core = "
          f"{t_wall / t_all / cores:4.2f} x cores (wall time; target >= 0.85)")
    print(f"  gram            {1 / t_gram:12,.0f} steps/s   {t_np / t_gram:5.1f}x numpy (target >= 30)")


def main():
    cores = os.cpu_count()
    print(f"cores: {cores}")
    N = 1000
    teacher = om.Teacher.orthonormal(N, 8, seed=0)
    rates("full weights, N = 1000, K = M = 8", om.Student.full(N, 8, seed=1), teacher, 1.0, cores)
    mteacher = om.Teacher.modes(N, 8, p=7, seed=0)
    rates("mode student, N = 1000, K = M = 8, p = 7, Xi trained", om.Student.from_teacher_modes(mteacher, seed=1),
          mteacher, 1.0, cores)

    print("explicit engine against the one-sweep floor, K = M = 8 (CPU us per step, medians):")
    for N in (1000, 10_000, 100_000, 1_000_000):
        r = {k: float(np.median(v)) for k, v in per_step_explicit(N, 8).items()}
        print(f"  N = {N:>9,}: draw {1e6 * r['draw']:9.1f}  floor {1e6 * r['floor']:9.1f}  engine "
              f"{1e6 * r['engine']:9.1f}   engine / floor {r['engine'] / r['floor']:4.2f} (target <= 1.5)")
    print("explicit engine against K, N = 10,000, M = K (CPU us per step): engine - floor should grow linearly")
    for K in (2, 4, 8, 16, 32, 64):
        r = {k: float(np.median(v)) for k, v in per_step_explicit(10_000, K).items()}
        print(f"  K = {K:>2}: floor {1e6 * r['floor']:8.1f}  engine {1e6 * r['engine']:8.1f}  "
              f"above floor {1e6 * (r['engine'] - r['floor']):7.1f}  ratio {r['engine'] / r['floor']:4.2f}")
    print("gram against explicit, N = 1000, K = M (CPU us per step):")
    for K in (2, 4, 8, 16, 32, 64):
        tg = float(np.median(per_step_gram(1000, K)))
        te = float(np.median(per_step_explicit(1000, K)["engine"]))
        print(f"  K = {K:>2}: gram {1e6 * tg:8.2f}  explicit {1e6 * te:8.2f}  gram / explicit {tg / te:5.3f} (target < 1)")

    print("gram engine against N (K = M = 8 full weights, 2e5 steps):")
    base = None
    for N in (100, 1000, 10_000, 100_000, 1_000_000):
        t = om.Teacher.random(N, 8, seed=0)
        s = om.Student.full(N, 8, init="small", seed=1)
        dt = median(lambda: om.simulate(s, t, eta=1.0, alpha=[0.0, 2e5 / N], method="gram"),
                    clock=time.process_time) / 2e5
        base = base or dt
        print(f"  N = {N:>9,}: {1 / dt:12,.0f} steps/s   cost relative to N = 100: {dt / base:4.2f}")

    teacher = om.Teacher.modes(30, 8, seed=0)
    student = om.Student.from_teacher_modes(teacher, seed=1)
    t0 = time.perf_counter()
    om.integrate(student, teacher, eta=5.0, alpha_max=1e5)
    sim = om.simulate(student, teacher, eta=5.0, alpha_max=1e5, replicas=4, seed=0, method="explicit")
    wall = time.perf_counter() - t0
    print(f"published on-line run (N = 30, K = M = 8, p = 3, eta = 5, 4 replicas x {int(sim.steps[-1]):,} steps "
          f"+ ODE, explicit engine): {wall:.1f} s (target < 60 s; reference code ~1.5 h)")


if __name__ == "__main__":
    main()
