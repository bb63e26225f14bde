"""Models and runs from flat parameters: the recipes that scans and the command line share.

:func:`networks` builds a teacher and a student; :func:`run_ode` and :func:`run_simulation`
run them. Every argument is a plain value (numbers, strings, lists), so a run is identified by
its parameters and repeated by ``run_ode(**traj.params["spec"])``. The defaults are the
paper's on-line setting (N = 30, K = M = 8, p = round(ln N) = 3 modes, only ``Xi`` trained,
eta = 5). The options of the dynamics (``sigma``, ``weight_decay``, ``batch``, ``activation``,
``max_norm`` and the rates) are those of :class:`onlinemdl.dynamics.Dynamics`.
"""
from __future__ import annotations

import inspect

from .dynamics import Dynamics
from .model import Student, Teacher, default_modes, mode_scale
from .ode import integrate
from .runsetup import alpha_grid, check_choice, check_flag, check_fluctuation_mode, check_int, check_seed
from .sgd import METHODS, simulate
from .trajectory import Trajectory

TEACHERS = ("modes", "random", "orthonormal")
STUDENTS = ("teacher-modes", "full", "modes")
INITS = ("large", "small", "informed")


def networks(N=30, M=8, K=None, p=None, teacher="modes", student="teacher-modes", init="large", train=None,
             teacher_seed=0, student_seed=1, sigma=0.0, weight_decay=0.0, batch=1,
             activation="erf") -> tuple[Teacher, Student]:
    """Teacher and student from flat parameters; the defaults are the paper's on-line setting.

    Parameters
    ----------
    N, M, K : input size, teacher and student hidden units (``K`` defaults to ``M``).
    p : number of modes (default ``round(ln N)``).
    teacher : "modes" (``Teacher.modes``), "random" or "orthonormal".
    student : "teacher-modes" (``Student.from_teacher_modes``: fresh ``Xi``, teacher's ``A`` and
        ``lam``, K = M), "full" (``Student.full`` with ``init``) or "modes" (``Student.modes``).
    train : trained factors (default: the constructor's own).
    teacher_seed, student_seed : seeds of the two networks (integers >= 0).
    sigma, weight_decay, batch, activation : as in :class:`onlinemdl.dynamics.Dynamics`.
    """
    check_choice("teacher", teacher, TEACHERS)
    check_choice("student", student, STUDENTS)
    tkw = dict(seed=teacher_seed, sigma=sigma, activation=activation)
    if teacher == "modes":
        t = Teacher.modes(N, M, p=p, **tkw)
    elif teacher == "random":
        t = Teacher.random(N, M, **tkw)
    else:
        t = Teacher.orthonormal(N, M, **tkw)
    skw = dict(weight_decay=weight_decay, batch=batch, activation=activation)
    if train is not None:
        skw["train"] = (train,) if isinstance(train, str) else tuple(train)
    K = M if K is None else K
    if student == "teacher-modes":
        if K != M:
            raise ValueError(f'K must equal M = {M} for student="teacher-modes", got {K}')
        s = Student.from_teacher_modes(t, seed=student_seed, **skw)
    elif student == "full":
        check_choice("init", init, INITS)
        s = Student.full(N, K, init=init, seed=student_seed, teacher=t if init == "informed" else None, **skw)
    else:
        s = Student.modes(N, K, default_modes(N) if p is None else p, seed=student_seed, **skw)
    return t, s


def init_variance(N, student, init) -> float:
    """``E[G_aa]`` of the N-dimensional weights that :func:`networks` draws (``Xi`` of a mode student:
    ``mode_scale(N)^2``; ``W`` of a full one: 1 for ``init="large"``, ``1/N`` for "small"), the
    ``init_variance`` of ``integrate(..., fluctuations="fresh")``. "informed" weights are not i.i.d.: refused."""
    if student in ("teacher-modes", "modes"):
        return mode_scale(N) ** 2
    if init == "informed":
        raise ValueError('fluctuations="fresh" needs i.i.d. initial weights: not init="informed"')
    return 1.0 if init == "large" else 1.0 / N


#: Parameters of :func:`networks`, in order.
NETWORK_PARAMS = tuple(inspect.signature(networks).parameters)
_D = Dynamics.__dataclass_fields__


def run_ode(N=30, M=8, K=None, p=None, teacher="modes", student="teacher-modes", init="large", train=None,
            teacher_seed=0, student_seed=1, sigma=0.0, weight_decay=0.0, batch=1, activation="erf", eta=5.0,
            eta_lam=None, eta_A=None, eta_v=None, max_norm=_D["max_norm"].default, alpha_max=1e5, points=200,
            method="auto", fluctuations=False, covariance=True) -> Trajectory:
    """ODE run of the model :func:`networks` builds; the default ``run`` of :func:`onlinemdl.scan`.

    The remaining parameters go to :func:`onlinemdl.integrate` (``fluctuations``: False, True, "fixed" or
    "fresh", the finite-N theory at the networks' N; with "fresh", for runs whose N-dimensional weights
    are drawn afresh as :func:`networks` draws them, whose variance it passes on as ``init_variance``;
    ``covariance=False``: without the state covariance at every output, which a scan would store per point).
    ``params["spec"]`` of the returned Trajectory records every argument, so
    ``run_ode(**traj.params["spec"])`` repeats it.
    """
    spec = dict(locals())
    _check_ode(spec)
    t, s = networks(**{k: spec[k] for k in NETWORK_PARAMS})
    fresh = dict(init_variance=init_variance(N, student, init)) if fluctuations == "fresh" else {}
    traj = integrate(s, t, eta=eta, eta_lam=eta_lam, eta_A=eta_A, eta_v=eta_v, max_norm=max_norm,
                     alpha_max=alpha_max, points=points, method=method, fluctuations=fluctuations,
                     covariance=covariance, **fresh)
    traj.params["spec"] = spec
    return traj


def run_simulation(N=30, M=8, K=None, p=None, teacher="modes", student="teacher-modes", init="large", train=None,
                   teacher_seed=0, student_seed=1, sigma=0.0, weight_decay=0.0, batch=1, activation="erf",
                   eta=5.0, eta_lam=None, eta_A=None, eta_v=None, max_norm=_D["max_norm"].default, alpha_max=1e5,
                   points=200, replicas=4, seed=0, method="gram", threads=None, test_set=0) -> Trajectory:
    """SGD simulation of the model :func:`networks` builds (:func:`onlinemdl.simulate`).

    ``params["spec"]`` of the returned Trajectory records every argument. In a scan over
    processes, set ``threads=1`` to keep one thread per process.
    """
    spec = dict(locals())
    _check_simulation(spec)
    t, s = networks(**{k: spec[k] for k in NETWORK_PARAMS})
    traj = simulate(s, t, eta=eta, eta_lam=eta_lam, eta_A=eta_A, eta_v=eta_v, max_norm=max_norm,
                    alpha_max=alpha_max, points=points, replicas=replicas, seed=seed, method=method,
                    threads=threads, test_set=test_set)
    traj.params["spec"] = spec
    return traj


def _check_common(p: dict):
    """Type and range checks of the flat parameters shared by run_ode and run_simulation."""
    check_int("N", p["N"])
    check_int("M", p["M"])
    for name in ("K", "p"):
        if p[name] is not None:
            check_int(name, p[name])
    check_choice("teacher", p["teacher"], TEACHERS)
    check_choice("student", p["student"], STUDENTS)
    check_choice("init", p["init"], INITS)
    if p["train"] is not None and not isinstance(p["train"], str):
        if not isinstance(p["train"], (list, tuple)) or not all(
                isinstance(t, str) for t in p["train"]):
            raise ValueError(f"train must be a list of factor names (strings), got {p['train']!r}")
    check_seed("teacher_seed", p["teacher_seed"])
    check_seed("student_seed", p["student_seed"])
    Dynamics(train=("w",), eta=p["eta"], eta_lam=p["eta_lam"], eta_A=p["eta_A"], eta_v=p["eta_v"], sigma=p["sigma"],
             weight_decay=p["weight_decay"], batch=p["batch"], activation=p["activation"], max_norm=p["max_norm"])
    alpha_grid(p["alpha_max"], p["points"])


def check_params(run, params: dict) -> None:
    """Check the parameters of one call of :func:`run_ode` or :func:`run_simulation` without running it:
    a ValueError naming the parameter and what it must be (so a scan refuses a bad point before any
    worker starts). Other run functions are only checked by their signature (in :func:`onlinemdl.scan`)."""
    if run not in (run_ode, run_simulation):
        return
    p = inspect.signature(run).bind(**params)
    p.apply_defaults()
    (_check_ode if run is run_ode else _check_simulation)(p.arguments)


def _check_ode(p: dict):
    _check_common(p)
    from .ode.integrate import SOLVE_IVP_METHODS
    check_choice("method", p["method"], ("auto", "euler") + SOLVE_IVP_METHODS)
    check_flag("covariance", p["covariance"])
    if check_fluctuation_mode(p["fluctuations"]) == "fresh":
        init_variance(p["N"], p["student"], p["init"])  # refuses "informed" weights before any work


def _check_simulation(p: dict):
    _check_common(p)
    check_choice("method", p["method"], METHODS)
    check_int("replicas", p["replicas"])
    check_seed("seed", p["seed"])
    if p["threads"] is not None:
        check_int("threads", p["threads"])
    check_int("test_set", p["test_set"], 0)
