"""Trajectory: what every engine (ODE, SGD, mode network) returns.

A plain container with no I/O: :mod:`onlinemdl.storage` writes and reads it
(``save_trajectory`` / ``load_trajectory``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np

#: Fields that run over the alpha grid (with a leading replica axis for simulations).
SERIES = ("eps_g", "Q", "R", "Rm", "S", "lam", "A", "v", "eps_test")


@dataclass
class Trajectory:
    """Order parameters and error of one run on an ``alpha`` grid.

    Attributes
    ----------
    alpha : (n,) times ``alpha = steps / N``.
    steps : (n,) matching number of SGD steps (``round(alpha N)``).
    eps_g : ([replicas,] n) generalisation error, closed form (label noise excluded).
    Q, R : ([replicas,] n, K, K) and ([replicas,] n, K, M) order parameters.
    T : (M, M) teacher overlaps (constant in time).
    Rm, S, lam, A, v : mode-student state and second-layer weights over time (None where
        not part of the model).
    eps_test : test-set error of a simulation, where requested.
    kind : "ode", "sgd" or "modenet".
    params : every parameter of the run (model, rates, method, seed).
    status : "ok" (ran to the last time), "diverged" (the weights ran away: the series end at
        the divergence, or for a simulation hold NaN after each diverged replica's
        ``alpha_diverged``; "diverged" when any replica diverged) or "failed" (the ODE solver
        gave up; ``message`` says why).
    message : human-readable account of the status.
    nfev : right-hand-side evaluations (ODE) or SGD steps (simulation).
    diverged : (replicas,) per-replica divergence flag (simulations).
    alpha_diverged : (replicas,) alpha at which each replica diverged (NaN where it did not).
    eps_g_sd, eps_g_bias : (n,) finite-N theory (``integrate(..., fluctuations=True)``): predicted
        standard deviation of one SGD run's eps_g across runs, and mean of SGD minus the ODE.
    Q_sd, R_sd : (n, K, K), (n, K, M) predicted standard deviations of Q and R across runs.
    cov, bias : (n, d, d), (n, d) predicted covariance and mean shift of the ODE state vector.
    fluct_valid_until : alpha where the finite-N expansion breaks down (inf: nowhere).
    """

    alpha: np.ndarray
    steps: np.ndarray
    eps_g: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    T: np.ndarray
    Rm: np.ndarray | None = None
    S: np.ndarray | None = None
    lam: np.ndarray | None = None
    A: np.ndarray | None = None
    v: np.ndarray | None = None
    eps_test: np.ndarray | None = None
    kind: str = "ode"
    params: dict = field(default_factory=dict)
    status: str = "ok"
    message: str = ""
    nfev: int = 0
    diverged: np.ndarray | None = None
    alpha_diverged: np.ndarray | None = None
    eps_g_sd: np.ndarray | None = None
    eps_g_bias: np.ndarray | None = None
    Q_sd: np.ndarray | None = None
    R_sd: np.ndarray | None = None
    cov: np.ndarray | None = None
    bias: np.ndarray | None = None
    fluct_valid_until: float | None = None

    def summary(self) -> str:
        """One line: eps_g at the first and the last time (the mean of the replicas that did not
        diverge; where all diverged, the mean up to each divergence, to the last time any replica
        was still finite), the status and its message, the wall time."""
        if self.alpha.size == 0:
            return f"no output times; {self.status}: {self.message}"
        eps = self.mean().eps_g
        label = "eps_g"
        if self.eps_g.ndim == 2:
            kept = self.replicas - (0 if self.diverged is None else int(np.sum(self.diverged)))
            label = f"eps_g (mean of {kept} replicas)" if kept else \
                f"eps_g (all {self.replicas} replicas diverged; mean up to each divergence)"
        finite = np.flatnonzero(np.isfinite(eps))
        if finite.size == 0:
            return f"{label}: no finite value; {self.status}: {self.message} [{self.params.get('wall_time', 0.0):.1f} s]"
        last = finite[-1]
        return (f"{label} {eps[finite[0]]:.3g} at alpha = {self.alpha[finite[0]]:.3g} -> {eps[last]:.3g} at alpha = "
                f"{self.alpha[last]:.3g}; {self.status}: {self.message} [{self.params.get('wall_time', 0.0):.1f} s]")

    def __repr__(self):
        form = self.params.get("form", "")
        shape = f"K={self.K}, M={self.M}" + (f", replicas={self.replicas}" if self.eps_g.ndim == 2 else "")
        return f"Trajectory({self.kind}{' ' + form if form else ''}, {shape}, {self.alpha.size} points: {self.summary()})"

    @property
    def replicas(self) -> int:
        """Number of replicas (1 for an ODE or a single simulation)."""
        return self.eps_g.shape[0] if self.eps_g.ndim == 2 else 1

    @property
    def K(self) -> int:
        return self.Q.shape[-1]

    @property
    def M(self) -> int:
        return self.T.shape[0]

    def _stat(self, fn):
        if self.eps_g.ndim == 1:
            return self
        keep = np.ones(self.replicas, bool) if self.diverged is None else ~np.asarray(self.diverged)
        out = {}
        for name in SERIES:
            arr = getattr(self, name)
            if arr is None:
                continue
            if keep.any():
                out[name] = fn(arr[keep], None)
            else:  # every replica diverged: at each time, the replicas still finite there
                out[name] = fn(np.where(np.isfinite(arr), arr, 0.0), np.isfinite(arr))
        return replace(self, diverged=None, alpha_diverged=None, **out)

    def mean(self) -> "Trajectory":
        """Replica mean of every series, over the replicas that did not diverge; where every
        replica diverged, at each time over the replicas still finite then (NaN once none is)."""
        def mean(a, finite):
            if finite is None:
                return a.mean(axis=0)
            n = finite.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(n > 0, a.sum(axis=0) / np.maximum(n, 1), np.nan)
        return self._stat(mean)

    def sem(self) -> "Trajectory":
        """Standard error of the replica mean, over the same replicas as :meth:`mean`."""
        def sem(a, finite):
            if finite is None:
                n = a.shape[0]
                return a.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(a.shape[1:])
            n = finite.sum(axis=0)
            m = np.where(n > 0, a.sum(axis=0) / np.maximum(n, 1), 0.0)
            var = np.where(finite, (a - m) ** 2, 0.0).sum(axis=0) / np.maximum(n - 1, 1)
            return np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), np.where(n == 1, 0.0, np.nan))
        return self._stat(sem)

    def replica(self, i) -> "Trajectory":
        """Replica ``i`` of a simulation, without the replica axis."""
        if self.eps_g.ndim == 1:
            if i != 0:
                raise ValueError(f"replica must be 0 for a trajectory without replicas, got {i!r}")
            return self
        if not (isinstance(i, (int, np.integer)) and 0 <= i < self.replicas):
            raise ValueError(f"replica must be an integer in [0, {self.replicas - 1}], got {i!r}")
        picked = {name: getattr(self, name)[i] for name in SERIES if getattr(self, name) is not None}
        return replace(self, diverged=None, alpha_diverged=None, **picked)

    def at(self, alpha) -> int:
        """Index of the grid point nearest to ``alpha`` (a finite number)."""
        if isinstance(alpha, (str, bytes, bool, np.bool_)) or np.ndim(alpha) != 0:
            raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
        try:
            value = float(alpha)
        except (TypeError, ValueError):
            raise TypeError(f"alpha must be a number, got {type(alpha).__name__}") from None
        if not np.isfinite(value):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if self.alpha.size == 0:
            raise ValueError("alpha: the trajectory has no output times")
        return int(np.argmin(np.abs(self.alpha - value)))

    def __eq__(self, other):
        if not isinstance(other, Trajectory):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))


def _same(a, b) -> bool:
    """Exact equality of field or parameter values (NaN equals NaN; dicts compared by key)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return False
    if x.dtype.kind in "fc" and y.dtype.kind in "fc":
        return bool(np.array_equal(x, y, equal_nan=True))
    return bool(np.array_equal(x, y))
