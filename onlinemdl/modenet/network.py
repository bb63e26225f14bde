"""Feed-forward networks of factorised layers, with forward and backward passes by hand.

A network is a list of layer specs (see :mod:`.layers`), a dictionary of named parameter
arrays, one activation per hidden layer and an output ("softmax" or "linear"). Layers that
name the same array share it; the optimiser updates arrays in place, so sharing survives
training.
"""
from __future__ import annotations

import copy
import math

import numpy as np

from . import activations as acts, layers as lay, losses

#: network kinds: "modes" (one pattern set per layer, shared across depth), "modes-untied"
#: (two pattern sets per layer), and the baselines "dense", "lowrank" (U V^T), "svd" (U diag(s) V^T)
KINDS = ("modes", "modes-untied", "dense", "lowrank", "svd")
DTYPES = ("float32", "float64")


def factor_scale(n):
    """Standard deviation (n ln n)^(-1/6) of a mode factor of a width-n layer (1 for n ln n < 1)."""
    return max(n * math.log(n), 1.0) ** (-1.0 / 6.0) if n > 1 else 1.0


def default_modes(widths):
    """Default number of modes p = round(ln N) of the widest layer, at least 1."""
    return max(1, round(math.log(max(widths))))


def _check_dtype(dtype):
    name = np.dtype(dtype).name if dtype is not None else None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return np.dtype(name)


class Network:
    """A deep network of dense, mode, low-rank or SVD layers.

    Parameters
    ----------
    specs : list of layer specs, input to output.
    params : dict name -> array (all of one floating dtype).
    activations : one activation name per hidden layer (len(specs) - 1).
    output : "softmax" (cross-entropy on integer labels) or "linear" (mean squared error).
    trainable : names of the trained parameters (default all).
    meta : free-form description (kind, widths, p, ...), stored with the model.
    """

    def __init__(self, specs, params, activations, output="softmax", trainable=None, meta=None):
        if len(activations) != len(specs) - 1:
            raise ValueError(f"activations must name one activation per hidden layer ({len(specs) - 1}), got {len(activations)}")
        self.specs = [dict(s) for s in specs]
        self.params = params
        self.activations = list(activations)
        self._acts = [acts.get(a) for a in self.activations]
        self.output = output
        self._out, self._loss = losses.get(output)
        self.trainable = tuple(params) if trainable is None else tuple(trainable)
        unknown = set(self.trainable) - set(params)
        if unknown:
            raise ValueError(f"trainable must name parameters among {sorted(params)}, got {sorted(unknown)}")
        self.meta = dict(meta or {})
        dtypes = {a.dtype for a in params.values()}
        if len(dtypes) != 1:
            raise ValueError(f"params must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = _check_dtype(dtypes.pop())
        self.layers = [lay.make(params, s) for s in self.specs]

    # --- construction -----------------------------------------------------------------
    @classmethod
    def build(cls, widths, kind="modes", p=None, activation="relu", output="softmax", bias=True,
              mu=1.0, dtype="float64", seed=None):
        """A network of widths ``[N_0, ..., N_L]`` whose every layer is of one ``kind``.

        Parameters
        ----------
        widths : input width, hidden widths, output width (at least two entries).
        kind : one of :data:`KINDS`.
        p : number of modes (rank) per layer: an int, or one per layer for the untied kinds
            (default round(ln max N)). "svd" clips it to min(N_(l-1), N_l).
        activation : hidden activation, "relu", "tanh", "erf" or "linear".
        output : "softmax" or "linear".
        bias : whether every layer has a trainable bias (initialised at 0).
        mu : strength of the orthonormality penalty of "svd".
        dtype : "float64" or "float32".
        seed : seed of the initialisation.

        Notes
        -----
        Mode factors: a pattern set of dimension n is N(0, 1) (n ln n)^(-1/6); ``lam^l`` is
        N(0, 1) s(N_(l-1))^2 / s(N_l), so that ``Var(W^l_ij) = p / (N_(l-1) ln N_(l-1))``
        (every factor is N(0, 1) (N ln N)^(-1/6) when the widths are equal).
        Baselines: ``Var(W_ij) = c / N_(l-1)``, c = 2 for ReLU and 1 otherwise.
        """
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths must list at least two positive widths, got {widths}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        acts.get(activation)
        dtype = _check_dtype(dtype)
        L = len(widths) - 1
        ps = cls._modes_per_layer(widths, kind, p)
        rng = np.random.default_rng(seed)
        gain = 2.0 if activation == "relu" else 1.0
        params, specs = {}, []
        if kind == "modes":
            for l, n in enumerate(widths):
                params[f"xi{l}"] = factor_scale(n) * rng.standard_normal((n, ps[0]))
        for l in range(1, L + 1):
            n_in, n_out, r = widths[l - 1], widths[l], ps[l - 1]
            spec = {"type": "modes" if kind.startswith("modes") else kind, "b": f"b{l}" if bias else None}
            if kind.startswith("modes"):
                spec.update(xi_in=f"xi{l - 1}", lam=f"lam{l}", xi_out=f"xi{l}")
                if kind == "modes-untied":
                    spec.update(xi_in=f"xi_in{l}", xi_out=f"xi_out{l}")
                    params[spec["xi_in"]] = factor_scale(n_in) * rng.standard_normal((n_in, r))
                    params[spec["xi_out"]] = factor_scale(n_out) * rng.standard_normal((n_out, r))
                params[spec["lam"]] = factor_scale(n_in) ** 2 / factor_scale(n_out) * rng.standard_normal(r)
            elif kind == "dense":
                spec["W"] = f"W{l}"
                params[spec["W"]] = math.sqrt(gain / n_in) * rng.standard_normal((n_out, n_in))
            elif kind == "lowrank":
                spec.update(U=f"U{l}", V=f"V{l}")
                sd = (gain / (r * n_in)) ** 0.25  # Var(W_ij) = r sd^4 = gain / n_in
                params[spec["U"]] = sd * rng.standard_normal((n_out, r))
                params[spec["V"]] = sd * rng.standard_normal((n_in, r))
            else:  # svd
                spec.update(U=f"U{l}", s=f"s{l}", V=f"V{l}", mu=float(mu))
                params[spec["U"]] = np.linalg.qr(rng.standard_normal((n_out, r)))[0]
                params[spec["V"]] = np.linalg.qr(rng.standard_normal((n_in, r)))[0]
                params[spec["s"]] = math.sqrt(gain * n_out / r) * rng.standard_normal(r)  # Var(W_ij) = gain / n_in
            if bias:
                params[spec["b"]] = np.zeros(n_out)
            specs.append(spec)
        params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
        meta = {"kind": kind, "widths": widths, "p": ps, "activation": activation, "seed": seed}
        return cls(specs, params, [activation] * (L - 1), output=output, meta=meta)

    @staticmethod
    def _modes_per_layer(widths, kind, p):
        L = len(widths) - 1
        if kind == "dense":
            return [None] * L
        if p is None:
            p = default_modes(widths)
        ps = [p] * L if np.isscalar(p) else list(p)
        if len(ps) != L or any(not isinstance(q, (int, np.integer)) or q < 1 for q in ps):
            raise ValueError(f"p must be a positive integer or a list of {L} of them, got {p!r}")
        if kind == "modes" and len(set(ps)) != 1:
            raise ValueError(f'p must be one integer for kind="modes" (shared pattern sets), got {p!r}')
        if kind == "svd":
            ps = [min(q, widths[l], widths[l + 1]) for l, q in enumerate(ps)]
        return [int(q) for q in ps]

    def copy(self):
        """An independent copy (shared arrays stay shared within the copy)."""
        return Network(self.specs, copy.deepcopy(self.params), self.activations, self.output,
                       self.trainable, copy.deepcopy(self.meta))

    def astype(self, dtype):
        """A copy with every parameter in ``dtype``."""
        dtype = _check_dtype(dtype)
        params = {k: v.astype(dtype) for k, v in self.params.items()}
        return Network(self.specs, params, self.activations, self.output, self.trainable, copy.deepcopy(self.meta))

    # --- shapes -----------------------------------------------------------------------
    @property
    def depth(self):
        return len(self.layers)

    def n_params(self, trainable_only=True):
        """Number of (trainable) parameters, each shared array counted once."""
        names = self.trainable if trainable_only else self.params
        return int(sum(self.params[n].size for n in names))

    @property
    def n_inputs(self) -> int:
        """Input width N_0."""
        return int(self.layers[0].weight_shape()[1])

    @property
    def n_outputs(self) -> int:
        """Output width N_L."""
        return int(self.layers[-1].weight_shape()[0])

    def mode_layers(self):
        """Indices of the layers with modes (a ``lam`` or ``s`` vector)."""
        return [l for l, s in enumerate(self.specs) if s["type"] in ("modes", "svd")]

    # --- passes -----------------------------------------------------------------------
    def _input(self, X):
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise ValueError(f"X must be a 2-d array of samples x {self.n_inputs} features, got shape {X.shape}")
        return np.ascontiguousarray(X, dtype=self.dtype)

    def forward(self, X, hidden=False):
        """Output fields ``z^L`` of a batch ``X`` (rows are samples); with ``hidden=True`` also the
        list of hidden activations ``h^l = g(z^l)``, l = 1 .. L-1."""
        h = self._input(X)
        hs, self._pre = [], []
        for layer, act in zip(self.layers, self._acts + [None]):
            z = layer.forward(h)
            if act is None:
                break
            self._pre.append(z)
            h = act[0](z)  # h^l = g(z^l)
            hs.append(h)
        return (z, hs) if hidden else z

    def hidden(self, X):
        """Hidden activations ``h^l``, one (batch x N_l) array per hidden layer."""
        return self.forward(X, hidden=True)[1]

    def predict_proba(self, X):
        """Network outputs: class probabilities (softmax) or linear outputs."""
        return self._out(self.forward(X))

    def predict(self, X):
        """Class labels (softmax) or outputs (linear)."""
        z = self.forward(X)
        return z.argmax(axis=1) if self.output == "softmax" else z

    def accuracy(self, X, y):
        """Fraction of correct labels: argmax for softmax, sign agreement for a scalar linear output."""
        z = self.forward(X)
        y = np.asarray(y)
        if len(y) != len(z):
            raise ValueError(f"X and y must have the same number of samples, got {len(z)} and {len(y)}")
        if self.output == "softmax":
            return float(np.mean(z.argmax(axis=1) == y))
        return float(np.mean(np.sign(z) == np.sign(np.asarray(y).reshape(z.shape))))

    def penalty(self):
        """Sum of the layers' penalties and their gradients."""
        value, grads = 0.0, []
        for layer in self.layers:
            v, g = layer.penalty()
            value += v
            grads += g
        return value, grads

    def loss(self, X, y):
        """Batch-mean loss (with penalties)."""
        return self._loss(self.forward(X), self._target(y))[0] + self.penalty()[0]

    def _target(self, y):
        if self.output == "softmax":
            y = np.asarray(y)
            if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= self.n_outputs)):
                raise ValueError(f"y must be a 1-d array of class labels in [0, {self.n_outputs - 1}], got shape "
                                 f"{y.shape}" + (f" and labels {y.min()}..{y.max()}" if y.size and y.ndim == 1 else ""))
            return y.astype(np.intp, copy=False)
        return np.asarray(y, dtype=self.dtype)

    def loss_and_grad(self, X, y, check=True):
        """Batch-mean loss and its gradient, a dict over the trainable parameters.

        ``check=False`` skips the label check (for callers that checked the whole data set once).
        """
        z = self.forward(X)
        loss, dz = self._loss(z, self._target(y) if check else y)
        pairs = []
        for l in range(self.depth - 1, -1, -1):
            if l < self.depth - 1:
                dz *= self._acts[l][1](self._pre[l])  # dL/dz^l = dL/dh^l g'(z^l)
            dz, g = self.layers[l].backward(dz, need_dx=l > 0)
            pairs += g
        pen, gpen = self.penalty()
        grads = {}
        for name, g in pairs + gpen:
            if name in grads:
                grads[name] = grads[name] + g  # a shared array collects the gradient of every use
            else:
                grads[name] = g
        return loss + pen, {n: grads[n] for n in self.trainable if n in grads}
