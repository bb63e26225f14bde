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
        params = {"W": student.W_full}
    params["v"] = student.v[None, :]
    params = {k: np.array(v, dtype=dtype) for k, v in params.items()}
    specs = [first, {"type": "dense", "W": "v", "b": None}]
    trainable = [_NAMES[t] for t in student.train]
    return Network(specs, params, [student.activation], output="linear", trainable=trainable,
                   meta={"kind": "online-modes" if student.is_modes else "online-dense"})


def order_parameters(net, teacher):
    """(Q, R) = (W W^T / N, W B^T / N) of a network built by :func:`network_from_student`."""
    W = net.layers[0].weight().astype(float)
    N = W.shape[1]
    return W @ W.T / N, W @ teacher.B.T / N


def _alpha_grid(alpha, alpha_max, N):
    if alpha is None:
        if not (np.isfinite(alpha_max) and alpha_max > 0):
            raise ValueError(f"alpha_max must be a finite number > 0, got {alpha_max!r}")
        alpha = np.linspace(0.0, alpha_max, 101)
    alpha = np.asarray(alpha, dtype=float)
    if alpha.ndim != 1 or alpha.size == 0 or np.any(alpha < 0) or np.any(np.diff(alpha) < 0):
        raise ValueError("alpha must be a non-empty increasing 1-d grid of times >= 0")
    steps = np.round(alpha * N).astype(np.int64)
    return steps / N, steps


def train_online(student, teacher, eta, alpha_max=None, replicas=1, seed=None, alpha=None,
                 eta_lam=None, eta_A=None, eta_v=None, dtype="float64"):
    """On-line SGD of ``student`` on ``teacher`` with the mode network's code.

    Every replica starts from the student's weights and sees its own stream of samples.
    Parameters follow ``onlinemdl.simulate``: ``eta`` for N-dimensional objects, ``eta_lam``,
    ``eta_A``, ``eta_v`` (default ``eta``) divided by N for O(1) objects; ``alpha`` (grid) or
    ``alpha_max`` (101 evenly spaced times). ``eps_g`` is the closed form of the weights.
    """
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    if student.N != teacher.N:
        raise ValueError(f"teacher and student must share N, got {teacher.N} and {student.N}")
    if student.activation != teacher.activation:
        raise ValueError("teacher and student must share the activation")
    if student.batch != 1:
        raise ValueError(f"student.batch must be 1 for the on-line bridge, got {student.batch}")
    if not isinstance(replicas, (int, np.integer)) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    N = student.N
    alpha, steps = _alpha_grid(alpha, alpha_max, N)
    rates = {"lam": eta_lam, "A": eta_A, "v": eta_v}
    lr_scale = {k: (eta if r is None else r) / (eta * N) for k, r in rates.items()}  # eta_x / N
    decay = 1.0 - eta * student.weight_decay / N
    big = "Xi" if student.is_modes else "W"
    act = activation_code(student.activation)
    T = teacher.T
    n = len(steps)
    out = {k: np.full((replicas, n) + shape, np.nan) for k, shape in
           (("eps_g", ()), ("Q", (student.K,) * 2), ("R", (student.K, teacher.M)), ("v", (student.K,)))}
    if student.is_modes:
        out["lam"] = np.full((replicas, n, student.p), np.nan)
        out["A"] = np.full((replicas, n, student.K, student.p), np.nan)
    diverged = np.zeros(replicas, bool)
    alpha_div = np.full(replicas, np.nan)
    for r in range(replicas):
        net = network_from_student(student, dtype)
        opt = SGD(eta, lr_scale=lr_scale)
        rng = np.random.default_rng(None if seed is None else [seed, r])
        X = y = None
        done = 0
        for j, target in enumerate(steps):
            while done < target:
                k = done % _CHUNK
                if k == 0:  # a fresh block of samples
                    X, y = teacher_student(teacher, _CHUNK, rng)
                _, grads = net.loss_and_grad(X[k:k + 1], y[k:k + 1])
                opt.step(net.params, grads)
                if decay != 1.0 and big in net.trainable:
                    net.params[big] *= decay
                done += 1
            Q, R = order_parameters(net, teacher)
            v = net.params["v"][0].astype(float)
            e = eps_g_closed(Q, R, T, v, teacher.vt, act) if np.all(np.isfinite(Q)) else np.nan
            if not np.isfinite(e):
                diverged[r], alpha_div[r] = True, alpha[j]
                break
            out["eps_g"][r, j], out["Q"][r, j], out["R"][r, j], out["v"][r, j] = e, Q, R, v
            if student.is_modes:
                out["lam"][r, j], out["A"][r, j] = net.params["lam"], net.params["A"]
    status = "diverged" if diverged.any() else "ok"
    message = f"{int(diverged.sum())} of {replicas} replicas diverged" if diverged.any() else ""
    params = {"eta": eta, "eta_lam": lr_scale["lam"] * eta * N, "eta_A": lr_scale["A"] * eta * N,
              "eta_v": lr_scale["v"] * eta * N, "N": N, "K": student.K, "M": teacher.M,
              "replicas": replicas, "seed": -1 if seed is None else seed, "engine": "modenet"}
    squeeze = (lambda a: a[0]) if replicas == 1 else (lambda a: a)
    return Trajectory(alpha=alpha, steps=steps, T=T, kind="modenet", params=params, status=status,
                      message=message, nfev=int(steps[-1]) * replicas, diverged=diverged,
                      alpha_diverged=alpha_div, **{k: squeeze(v) for k, v in out.items()})
