"""The bridge to the on-line theory: the mode network's own code trained on teacher-student data
in the on-line model's exact parametrisation (theory/conventions.md).

One hidden layer with fields ``h = W x / sqrt(N)`` (``W = A diag(lam) Xi^T`` or full), the
student's activation, a scalar linear output ``sum_i v_i g(h_i)``, loss ``0.5 (yhat - y)^2``,
batch size 1 with a fresh sample every step, and the rates ``eta`` for ``Xi`` (or ``W``) and
``eta_x / N`` for ``lam``, ``A``, ``v``. The result is a :class:`onlinemdl.trajectory.Trajectory`
of kind "modenet", directly comparable with ``onlinemdl.simulate``.
"""
from __future__ import annotations

import math

import numpy as np

from ..dynamics import Dynamics
from ..gaussian import activation_code, eps_g as eps_g_closed
from ..runsetup import check_int, divergence_threshold, output_times, record_steps, replica_streams
from ..trajectory import Trajectory
from .data import draw_teacher_student
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


def train_online(student, teacher, *, eta, alpha_max=None, alpha=None, replicas=1, seed=0, eta_lam=None,
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
    dynamics = Dynamics.from_networks(student, teacher, eta=eta, eta_lam=eta_lam, eta_A=eta_A, eta_v=eta_v,
                                      max_norm=max_norm)
    op0 = student.order_parameters(teacher)  # also checks that the networks share N
    if dynamics.batch != 1:
        raise ValueError(f"student.batch must be 1 for the on-line bridge, got {dynamics.batch}")
    replicas = check_int("replicas", replicas)
    streams = replica_streams(seed, replicas)
    N = student.N
    steps = record_steps(output_times(alpha, alpha_max, points), N)
    alpha = steps / N
    rates = {"lam": dynamics.eta_lam, "A": dynamics.eta_A, "v": dynamics.eta_v}
    eta = dynamics.eta
    lr_scale = {k: r / (eta * N) for k, r in rates.items()}  # eta_x / N
    decay = 1.0 - eta * dynamics.weight_decay / N
    big = "Xi" if student.is_modes else "W"
    act = activation_code(dynamics.activation)
    T = op0["T"]
    max_q = divergence_threshold(dynamics.max_norm, T, op0["Q"])
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
                        X, y = draw_teacher_student(teacher, _CHUNK, rng)
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
    params = dict(N=N, K=student.K, M=teacher.M, p=student.p or 0, form="modes" if student.is_modes else "full",
                  **dynamics.params(), method="modenet", seed=seed, replicas=replicas, vt=teacher.vt, T=T)
    squeeze = (lambda a: a[0]) if replicas == 1 else (lambda a: a)
    return Trajectory(alpha=alpha, steps=steps, T=T, kind="modenet", params=params, status=status,
                      message=message, nfev=int(steps[-1]) * replicas, diverged=diverged,
                      alpha_diverged=alpha_div, **{k: squeeze(v) for k, v in out.items()})
