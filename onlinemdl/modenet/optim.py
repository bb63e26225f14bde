"""Optimisers (SGD with momentum, Adam) updating named arrays in place, and learning-rate schedules."""
from __future__ import annotations

import math

import numpy as np


def _check_positive(name, value, allow_zero=False):
    ok = np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


class SGD:
    """SGD with (heavy-ball) momentum: ``m = beta m + g``, ``w -= lr f_w m``.

    Parameters
    ----------
    lr : learning rate.
    momentum : beta in [0, 1).
    lr_scale : optional dict name -> factor f_w multiplying ``lr`` for that parameter
        (the on-line model's ``eta / N`` for O(1) objects); 1 for names not listed.
    """

    def __init__(self, lr=0.1, momentum=0.0, lr_scale=None):
        self.lr = _check_positive("lr", lr)
        if not (0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.lr_scale = dict(lr_scale or {})
        self.state = {}

    def step(self, params, grads, factor=1.0):
        """Update ``params`` in place from ``grads`` with the learning rate ``lr * factor``."""
        for name, g in grads.items():
            if self.momentum:
                m = self.state.get(name)
                if m is None:
                    m = self.state[name] = np.zeros_like(g)
                m *= self.momentum
                m += g  # m = beta m + g
                g = m
            w = params[name]
            w -= (self.lr * factor * self.lr_scale.get(name, 1.0)) * g  # w -= lr m


class Adam:
    """Adam (Kingma & Ba 2015): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, lr_scale=None):
        self.lr = _check_positive("lr", lr)
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = _check_positive("eps", eps)
        self.lr_scale = dict(lr_scale or {})
        self.state = {}
        self.t = 0

    def step(self, params, grads, factor=1.0):
        """Update ``params`` in place from ``grads`` with the learning rate ``lr * factor``."""
        self.t += 1
        corr = math.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        for name, g in grads.items():
            if name not in self.state:
                self.state[name] = tuple(np.zeros_like(g) for _ in range(4))  # m, v and two work arrays
            m, v, t1, t2 = self.state[name]
            m *= self.b1
            np.multiply(g, 1 - self.b1, out=t1)
            m += t1  # m = b1 m + (1 - b1) g
            v *= self.b2
            np.multiply(g, g, out=t1)
            t1 *= 1 - self.b2
            v += t1  # v = b2 v + (1 - b2) g^2
            np.sqrt(v, out=t2)
            t2 += self.eps
            np.multiply(m, self.lr * factor * corr * self.lr_scale.get(name, 1.0), out=t1)
            t1 /= t2
            params[name] -= t1  # w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name, lr, momentum=0.0, lr_scale=None):
    """The optimiser ``name`` ("sgd" or "adam") with learning rate ``lr``."""
    if name == "sgd":
        return SGD(lr, momentum=momentum, lr_scale=lr_scale)
    if name == "adam":
        return Adam(lr, lr_scale=lr_scale)
    raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")


SCHEDULES = ("constant", "step", "exponential", "cosine")


def schedule(name="constant", epochs=1, step_size=10, gamma=0.5, final=0.0):
    """Learning-rate factor f(epoch) for epochs 0, 1, ...

    "constant": 1; "step": gamma^floor(epoch / step_size); "exponential": gamma^epoch;
    "cosine": final + (1 - final)(1 + cos(pi epoch / epochs)) / 2.
    """
    if name == "constant":
        return lambda e: 1.0
    if name == "step":
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size!r}")
        return lambda e: gamma ** (e // step_size)
    if name == "exponential":
        return lambda e: gamma**e
    if name == "cosine":
        return lambda e: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * e / max(epochs, 1)))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
