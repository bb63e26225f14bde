"""Affine layers ``z = s x W^T + b`` with the weight ``W`` (n_out x n_in) given by its factors.

Every layer reads its arrays from the network's parameter dictionary by name, so two
layers that name the same array share it (the tied pattern sets of a mode network).
``forward`` caches what ``backward`` needs; ``backward(dz)`` returns ``dL/dx`` (or None)
and the gradients as ``(name, array)`` pairs, a shared name appearing once per use.
Rows of ``x`` and ``z`` are samples. ``s`` is a fixed field scale (1, or 1/sqrt(N) in the
on-line model).
"""
from __future__ import annotations

import numpy as np


def _scaled(a, s):
    """``s a``, in place on the fresh product ``a``."""
    if s != 1.0:
        a *= s
    return a


#: spec "type" -> the names of the layer's parameters (besides the bias "b")
FACTORS = {
    "dense": ("W",),
    "modes": ("xi_in", "lam", "xi_out"),
    "lowrank": ("U", "V"),
    "svd": ("U", "s", "V"),
}


class Dense:
    """Standard weights: ``z = s x W^T + b``."""

    def __init__(self, params, spec):
        self.spec = spec
        self.W = params[spec["W"]]
        self.b = params[spec["b"]] if spec.get("b") else None
        self.s = spec.get("scale", 1.0)

    def weight(self):
        return self.W

    def weight_shape(self):
        return self.W.shape

    def forward(self, x):
        self.x = x
        z = _scaled(x @ self.W.T, self.s)  # z = s x W^T + b
        if self.b is not None:
            z += self.b
        return z

    def backward(self, dz, need_dx=True):
        sp, s = self.spec, self.s
        grads = [(sp["W"], _scaled(dz.T @ self.x, s))]  # dW = s dz^T x
        if self.b is not None:
            grads.append((sp["b"], dz.sum(axis=0)))
        dx = _scaled(dz @ self.W, s) if need_dx else None  # dx = s dz W
        return dx, grads

    def penalty(self):
        return 0.0, []


class Modes:
    """Mode-decomposed weights ``W = xi_out diag(lam) xi_in^T``: ``u = s x xi_in``, ``z = (u lam) xi_out^T + b``."""

    def __init__(self, params, spec):
        self.spec = spec
        self.xi_in = params[spec["xi_in"]]
        self.lam = params[spec["lam"]]
        self.xi_out = params[spec["xi_out"]]
        self.b = params[spec["b"]] if spec.get("b") else None
        self.s = spec.get("scale", 1.0)

    def weight(self):
        return (self.xi_out * self.lam) @ self.xi_in.T

    def weight_shape(self):
        return (self.xi_out.shape[0], self.xi_in.shape[0])

    def forward(self, x):
        self.x = x
        u = _scaled(x @ self.xi_in, self.s)  # u = s x xi_in  (mode fields)
        self.u = u
        self.ul = u * self.lam
        z = self.ul @ self.xi_out.T  # z = (u lam) xi_out^T + b
        if self.b is not None:
            z += self.b
        return z

    def backward(self, dz, need_dx=True):
        sp, s = self.spec, self.s
        g = dz @ self.xi_out  # g = dz xi_out
        gl = g * self.lam
        grads = [
            (sp["xi_out"], dz.T @ self.ul),  # d xi_out = dz^T (u lam)
            (sp["lam"], (g * self.u).sum(axis=0)),  # d lam_a = sum_b g_ba u_ba
            (sp["xi_in"], _scaled(self.x.T @ gl, s)),  # d xi_in = s x^T (g lam)
        ]
        if self.b is not None:
            grads.append((sp["b"], dz.sum(axis=0)))
        dx = _scaled(gl @ self.xi_in.T, s) if need_dx else None  # dx = s (g lam) xi_in^T
        return dx, grads

    def penalty(self):
        return 0.0, []


class LowRank:
    """Two-factor low-rank weights ``W = U V^T``: ``u = s x V``, ``z = u U^T + b``."""

    def __init__(self, params, spec):
        self.spec = spec
        self.U = params[spec["U"]]
        self.V = params[spec["V"]]
        self.b = params[spec["b"]] if spec.get("b") else None
        self.s = spec.get("scale", 1.0)

    def weight(self):
        return self.U @ self.V.T

    def weight_shape(self):
        return (self.U.shape[0], self.V.shape[0])

    def forward(self, x):
        self.x = x
        u = _scaled(x @ self.V, self.s)  # u = s x V
        self.u = u
        z = u @ self.U.T  # z = u U^T + b
        if self.b is not None:
            z += self.b
        return z

    def backward(self, dz, need_dx=True):
        sp, s = self.spec, self.s
        g = dz @ self.U  # g = dz U
        grads = [(sp["U"], dz.T @ self.u), (sp["V"], _scaled(self.x.T @ g, s))]  # dU = dz^T u, dV = s x^T g
        if self.b is not None:
            grads.append((sp["b"], dz.sum(axis=0)))
        dx = _scaled(g @ self.V.T, s) if need_dx else None  # dx = s g V^T
        return dx, grads

    def penalty(self):
        return 0.0, []


class SVD(Modes):
    """SVD-style weights ``W = U diag(s) V^T`` with the penalty
    ``(mu / 4) (||U^T U - I||^2 + ||V^T V - I||^2)`` keeping ``U`` and ``V`` orthonormal."""

    def __init__(self, params, spec):
        super().__init__(params, {**spec, "xi_in": spec["V"], "lam": spec["s"], "xi_out": spec["U"]})
        self.mu = spec.get("mu", 1.0)

    def penalty(self):
        value, grads = 0.0, []
        for name, F in ((self.spec["U"], self.xi_out), (self.spec["V"], self.xi_in)):
            D = F.T @ F
            D[np.diag_indices_from(D)] -= 1  # D = F^T F - I
            value += 0.25 * self.mu * float(np.sum(D * D))
            grads.append((name, self.mu * (F @ D)))  # d/dF (mu/4)||F^T F - I||^2 = mu F (F^T F - I)
        return value, grads


LAYERS = {"dense": Dense, "modes": Modes, "lowrank": LowRank, "svd": SVD}


def make(params, spec):
    """The layer described by ``spec`` (a dict with "type", parameter names, "b", "scale")."""
    if spec["type"] not in LAYERS:
        raise ValueError(f"layer type must be one of {sorted(LAYERS)}, got {spec['type']!r}")
    return LAYERS[spec["type"]](params, spec)
