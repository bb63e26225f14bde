"""The bridge to the on-line theory: the mode network's own code trained on teacher-student data
in the on-line model's exact parametrisation (DESIGN.md section 2).

One hidden layer with fields ``h = W x / sqrt(N)`` (``W = A diag(lam) Xi^T`` or full), the
student's activation, a scalar linear output ``sum_i v_i g(h_i)``, loss ``0.5 (yhat - y)^2``,
batch size 1 with a fresh sample every step, and the rates ``eta`` for ``Xi`` (or ``W``) and
``eta_x / N`` for ``lam``, ``A``, ``v``. The result is a :class:`onlinemdl.trajectory.Trajectory`
of kind "modenet", directly comparable with ``onlinemdl.simulate``.
"""
from __future__ import annotations

import math

import numpy as np

from ..gaussian import activation_code, eps_g as eps_g_closed
from ..ode import alpha_grid
from ..trajectory import Trajectory
from .data import teacher_student
from .network import Network
from .optim import SGD

#: Student factor name -> network parameter name
_NAMES = {"xi": "Xi", "lam": "lam", "A": "A", "v": "v", "w": "W"}
_CHUNK = 1024


def network_from_student(student, dtype="float64"):
    """The two-layer :class:`Network` computing ``yhat = sum_i v_i g(W_i x / sqrt N)`` of ``student``,
    training exactly ``student.train``."""
    s = 1.0 / math.sqrt(student.N)
    if student.is_modes:
        first = {"type": "modes", "xi_in": "Xi", "lam": "lam", "xi_out": "A", "b": None, "scale": s}
        params = {"Xi": student.Xi, "lam": student.lam, "A": student.A}
    else:
        first = {"type": "dense", "W": "W", "b": None, "scale": s}
        params = {"W": student.W}
    params["v"] = student.v[None, :]
    params = {k: np.array(v, dtype=dtype) for k, v in params.items()}
    specs = [first, {"type": "dense", "W": "v", "b": None}]
    trainable = [_NAMES[t] for t in student.train]
    return Network(specs, params, [student.activation], output="linear", trainable=trainable,
                   meta={"kind": "online-modes" if student.is_modes else "online-dense"})


def order_parameters(net, teacher):
    """Order parameters of a network built by :func:`network_from_student`: Q = W W^T / N,
    R = W B^T / N, and for a mode network Rm = Xi^T Xi / N, S = Xi^T B^T / N."""
    W = net.layers[0].weight().astype(float)
    N = W.shape[1]
    out = {"Q": W @ W.T / N, "R": W @ teacher.B.T / N}
    if "Xi" in net.params:
        Xi = net.params["Xi"].astype(float)
        out.update(Rm=Xi.T @ Xi / N, S=Xi.T @ teacher.B.T / N)
    return out


def _record_steps(alpha, alpha_max, points, N):
    if alpha is None:
        if alpha_max is None:
            raise ValueError("give alpha_max or alpha")
        alpha = alpha_grid(alpha_max, points)
    alpha = np.asarray(alpha, dtype=float)
    if alpha.ndim != 1 or alpha.size == 0 or not np.all(np.isfinite(alpha)) or np.any(alpha < 0):
        raise ValueError("alpha must be a non-empty 1-d array of finite times >= 0")
    return np.unique(np.rint(alpha * N).astype(np.int64))


def train_online(student, teacher, eta, alpha_max=None, alpha=None, replicas=1, seed=0, eta_lam=None,
                 eta_A=None, eta_v=None, points=200, max_norm=1e2, dtype="float64"):
    """On-line SGD of ``student`` on ``teacher`` with the mode network's code.

    Conventions follow ``onlinemdl.simulate``: every replica starts from the student's weights
    and draws its own samples from a stream spawned from ``seed``; ``eta`` is the rate of
    N-dimensional objects, ``eta_lam``, ``eta_A``, ``eta_v`` (default ``eta``) divided by N
    those of O(1) objects; ``alpha`` (recording times, rounded to whole steps) or ``alpha_max``
    (the default grid of ``onlinemdl.integrate``, ``points`` log-spaced times); a replica is
    marked diverged once some ``Q_ii`` exceeds ``max_norm`` times its scale (checked at the
    recording times) and holds NaN from there on. ``eps_g`` is the closed form of the weights.
    """
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    for name, r in (("eta_lam", eta_lam), ("eta_A", eta_A), ("eta_v", eta_v)):
        if r is not None and not (np.isfinite(r) and r >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {r!r}")
    if not (np.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
    if student.N != teacher.N:
        raise ValueError(f"teacher and student must share N, got {teacher.N} and {student.N}")
    if student.activation != teacher.activation:
        raise ValueError("teacher and student must share the activation")
    if student.batch != 1:
        raise ValueError(f"student.batch must be 1 for the on-line bridge, got {student.batch}")
    if not isinstance(replicas, (int, np.integer)) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    N = student.N
    steps = _record_steps(alpha, alpha_max, points, N)
    alpha = steps / N
    rates = {k: float(eta if r is None else r) for k, r in (("lam", eta_lam), ("A", eta_A), ("v", eta_v))}
    lr_scale = {k: r / (eta * N) for k, r in rates.items()}  # eta_x / N
    decay = 1.0 - eta * student.weight_decay / N
    big = "Xi" if student.is_modes else "W"
    act = activation_code(student.activation)
    T = teacher.T
    Q0 = student.order_parameters(teacher)["Q"]
    max_q = max_norm * max(1.0, float(np.max(np.diag(T))), float(np.max(np.abs(Q0))))
    streams = [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(replicas)]
    n = len(steps)
    out = {k: np.full((replicas, n) + shape, np.nan) for k, shape in
           (("eps_g", ()), ("Q", (student.K,) * 2), ("R", (student.K, teacher.M)), ("v", (student.K,)))}
    if student.is_modes:
        p, K, M = student.p, student.K, teacher.M
        out.update({k: np.full((replicas, n) + shape, np.nan) for k, shape in
                    (("lam", (p,)), ("A", (K, p)), ("Rm", (p, p)), ("S", (p, M)))})
    diverged = np.zeros(replicas, bool)
    alpha_div = np.full(replicas, np.nan)
    for r in range(replicas):
        net = network_from_student(student, dtype)
        opt = SGD(eta, lr_scale=lr_scale)
        rng = streams[r]
        X = y = None
        done = 0
        for j, target in enumerate(steps):
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the status
                while done < target:
                    k = done % _CHUNK
                    if k == 0:  # a fresh block of samples
                        X, y = teacher_student(teacher, _CHUNK, rng)
                    _, grads = net.loss_and_grad(X[k:k + 1], y[k:k + 1])
                    opt.step(net.params, grads)
                    if decay != 1.0 and big in net.trainable:
                        net.params[big] *= decay  # weight decay: x (1 - eta kappa / N)
                    done += 1
                op = order_parameters(net, teacher)
            op["v"] = net.params["v"][0].astype(float)
            Q = op["Q"]
            if not (np.all(np.isfinite(Q)) and np.max(np.diag(Q)) <= max_q and np.all(np.isfinite(op["v"]))):
                diverged[r], alpha_div[r] = True, alpha[j]
                break
            out["eps_g"][r, j] = eps_g_closed(Q, op["R"], T, op["v"], teacher.vt, act)
            if student.is_modes:
                op.update(lam=net.params["lam"], A=net.params["A"])
            for name, value in op.items():
                out[name][r, j] = value
    status = "diverged" if diverged.any() else "ok"
    message = (f"{int(diverged.sum())} of {replicas} replicas diverged (first at alpha = {np.nanmin(alpha_div):.6g})"
               if diverged.any() else f"trained to alpha = {alpha[-1]:.6g}")
    params = {"eta": eta, "eta_lam": rates["lam"], "eta_A": rates["A"], "eta_v": rates["v"], "N": N, "K": student.K, "M": teacher.M,
              "replicas": replicas, "seed": seed, "max_norm": max_norm, "train": list(student.train),
              "engine": "modenet"}
    squeeze = (lambda a: a[0]) if replicas == 1 else (lambda a: a)
    return Trajectory(alpha=alpha, steps=steps, T=T, kind="modenet", params=params, status=status,
                      message=message, nfev=int(steps[-1]) * replicas, diverged=diverged,
                      alpha_diverged=alpha_div, **{k: squeeze(v) for k, v in out.items()})
