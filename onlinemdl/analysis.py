"""What the dynamics do: plateaus, hidden-node specialization, the mode picture.

Everything here reads a :class:`~onlinemdl.trajectory.Trajectory` (ODE or simulation); nothing
reaches into an engine. Fixed points, their stability and escape times belong to the ODE
(:mod:`onlinemdl.ode.fixed_points`). Definitions and criteria: ``theory/fixed_points.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .trajectory import Trajectory


# --------------------------------------------------------------------------------------
# Common helpers
# --------------------------------------------------------------------------------------
def _single(traj: Trajectory, replica=None) -> Trajectory:
    """The trajectory without a replica axis: one replica, or the replica mean (``replica=None``)."""
    if traj.eps_g.ndim == 1:
        return traj
    return traj.mean() if replica is None else traj.replica(replica)


def _diag(X):
    """Diagonals of a stack of square matrices, shape (..., K)."""
    return np.diagonal(X, axis1=-2, axis2=-1)


def _ratio(num, den):
    """num / den, 0 where den is 0 (an overlap with a zero vector)."""
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


def _last_crossing(alpha, y, level):
    """Alpha at which ``y`` last rises through ``level`` (log-interpolated); NaN if it ends below."""
    if y[-1] < level:
        return math.nan
    below = np.nonzero(y < level)[0]
    if below.size == 0:
        return float(alpha[0])
    i = below[-1]
    a0, a1 = alpha[i], alpha[i + 1]
    f = (level - y[i]) / (y[i + 1] - y[i])
    if a0 > 0:  # geometric interpolation on log-spaced grids
        return float(a0 * (a1 / a0) ** f)
    return float(a0 + f * (a1 - a0))


# --------------------------------------------------------------------------------------
# The local exponent
# --------------------------------------------------------------------------------------
#: Default smoothing of a simulation's local exponent: "auto", the least of ``AUTO_WIDTHS`` (decades of
#: alpha) whose jackknife standard error has a median of at most ``SEM_TARGET``; chosen on the labelled set
#: of ``tests/test_features.py`` (an ODE is not smoothed).
SIM_SMOOTH = "auto"
AUTO_WIDTHS = (0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)
SEM_TARGET = 0.12


@dataclass
class LocalExponent:
    """Local exponent of a learning curve on a uniform log-alpha grid (:func:`local_exponent`).

    alpha : grid, ``per_decade`` points per decade. eps : the smoothed curve (the replica mean for a
        simulation). exponent : ``s = -d ln eps / d ln alpha`` (0 on a flat stretch, ``b`` on
        ``alpha^-b``, ``alpha / tau`` on ``exp(-alpha / tau)``).
    sem : its standard error over the replicas (jackknife: the exponent of the mean recomputed with
        each replica left out), or None for a single curve.
    smooth : Gaussian smoothing width used (decades). replicas : curves averaged.
    """

    alpha: np.ndarray
    eps: np.ndarray
    exponent: np.ndarray
    sem: np.ndarray | None
    smooth: float
    replicas: int


def _check_exponent_args(smooth, floor, per_decade):
    if not (smooth >= 0 and np.isfinite(smooth)):
        raise ValueError(f"smooth must be a finite number >= 0 (decades), got {smooth!r}")
    if not (0 <= floor < 1):
        raise ValueError(f"floor must be in [0, 1), got {floor!r}")
    if not (isinstance(per_decade, (int, np.integer)) and per_decade >= 4):
        raise ValueError(f"per_decade must be an integer >= 4, got {per_decade!r}")


def _smoothed(yu, smooth, per_decade):
    """Gaussian-smoothed ``yu`` and minus its derivative per ln(10) decade (odd reflection at the ends)."""
    if smooth > 0:
        from scipy.ndimage import gaussian_filter1d  # imported here: scipy is slow to import

        sigma = smooth * per_decade
        pad = int(math.ceil(4 * sigma))
        padded = np.pad(yu, pad, mode="reflect", reflect_type="odd")
        ys = gaussian_filter1d(padded, sigma)[pad:pad + yu.size]
        s = -gaussian_filter1d(padded, sigma, order=1)[pad:pad + yu.size] * per_decade
    else:
        ys = yu
        s = -np.gradient(yu, 1.0 / per_decade) if yu.size > 1 else np.zeros(1)
    return ys, s


def local_exponent(curve, eps=None, *, smooth=None, floor=1e-9, per_decade=100) -> LocalExponent:
    """Local exponent ``s = -d ln eps / d ln alpha`` of a learning curve, with its standard error.

    ``curve`` is a :class:`~onlinemdl.trajectory.Trajectory` (its ``eps_g``; for a simulation the
    mean of the replicas that did not diverge) or an array of alpha with ``eps`` given: shape (n,)
    for one curve, (replicas, n) for several (their mean is analysed).

    Method (``theory/fixed_points.md`` §1): ``log10`` of the (mean) curve is put on a uniform grid of
    ``per_decade`` points per decade of alpha (points in one cell averaged, at their mean position;
    a monotone cubic through the cell means fills the grid), smoothed with a Gaussian of width
    ``smooth`` decades (odd reflection at the ends keeps the end slopes) and differentiated; the
    curve is used only up to where it first falls below ``floor * max`` (converged: its logarithm
    is rounding noise there). With
    replicas, the standard error is the jackknife one: the whole procedure is repeated on the
    mean with each replica left out, so it includes the smoothing.

    ``smooth`` defaults to 0 for an ODE trajectory (noiseless) and to :data:`SIM_SMOOTH` for a
    simulation or several curves, 0.05 for one curve given as arrays. Smoothing spreads a sharp
    change of the exponent over about ``2 smooth`` decades.
    """
    if isinstance(curve, Trajectory):
        if eps is not None:
            raise ValueError("eps must not be given with a Trajectory")
        alpha, eps = curve.alpha, curve.eps_g
        if eps.ndim == 2 and curve.diverged is not None:
            eps = eps[~np.asarray(curve.diverged, bool)]
        if smooth is None:
            smooth = 0.0 if curve.kind == "ode" else (SIM_SMOOTH if eps.ndim == 2 and eps.shape[0] > 1 else 0.05)
    else:
        alpha = curve
        if eps is None:
            raise ValueError("eps must be given with an alpha array")
    alpha = np.asarray(alpha, float).ravel()
    eps = np.asarray(eps, float)
    eps2 = eps[None] if eps.ndim == 1 else eps
    if eps2.ndim != 2 or eps2.shape[1] != alpha.size:
        raise ValueError(f"alpha and eps must have the same length, got {alpha.size} and {eps.shape[-1]}")
    if smooth is None:
        smooth = 0.05 if eps.ndim == 1 else SIM_SMOOTH
    auto = isinstance(smooth, str)
    if auto and (smooth != "auto" or eps2.shape[0] < 2):
        raise ValueError(f'smooth must be a number of decades, or "auto" for several curves, got {smooth!r}')
    _check_exponent_args(AUTO_WIDTHS[0] if auto else smooth, floor, per_decade)
    mean = eps2.mean(axis=0) if eps2.shape[0] else np.full(alpha.size, np.nan)
    ok = (alpha > 0) & np.isfinite(mean) & np.all(np.isfinite(eps2), axis=0)
    alpha, mean, eps2 = alpha[ok], mean[ok], eps2[:, ok]
    if mean.size:
        low = np.nonzero(mean <= floor * np.max(mean))[0]
        n = low[0] if low.size else mean.size
        alpha, mean, eps2 = alpha[:n], mean[:n], eps2[:, :n]
    empty = np.empty(0)
    if alpha.size < 3 or alpha[-1] <= alpha[0]:
        return LocalExponent(empty, empty, empty, None if eps2.shape[0] < 2 else empty,
                             AUTO_WIDTHS[0] if auto else float(smooth), eps2.shape[0])
    x = np.log10(alpha)
    cell = np.rint((x - x[0]) * per_decade).astype(int)
    xu = x[0] + np.arange(cell[-1] + 1) / per_decade
    counts = np.bincount(cell)
    filled = counts > 0
    xc = np.bincount(cell, weights=x)[filled] / counts[filled]  # where the points of each cell are, on average

    def exponent_of(curve_mean):
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log10(np.maximum(curve_mean, np.finfo(float).tiny))
        yc = np.bincount(cell, weights=y)[filled] / counts[filled]
        if xc.size < 3:
            yu = np.interp(xu, xc, yc)
        else:  # monotone cubic through the cell means at their own abscissae, so the derivative has no steps
            from scipy.interpolate import PchipInterpolator  # imported here: scipy is slow to import

            yu = PchipInterpolator(xc, yc, extrapolate=True)(xu)
        return _smoothed(yu, smooth, per_decade)

    r = eps2.shape[0]

    def with_sem(width):
        nonlocal smooth
        smooth = width
        ys, s = exponent_of(mean)
        if r < 2:
            return ys, s, None
        loo = np.array([exponent_of((mean * r - eps2[k]) / (r - 1))[1] for k in range(r)])
        return ys, s, np.sqrt((r - 1) / r * np.sum((loo - loo.mean(axis=0)) ** 2, axis=0))

    if auto:  # the least smoothing whose standard error is at most SEM_TARGET (median over the curve)
        for width in AUTO_WIDTHS:
            ys, s, sem = with_sem(width)
            if sem is None or np.median(sem) <= SEM_TARGET:
                break
    else:
        ys, s, sem = with_sem(smooth)
    return LocalExponent(alpha=10.0 ** xu, eps=10.0 ** ys, exponent=s, sem=sem, smooth=float(smooth), replicas=r)


# --------------------------------------------------------------------------------------
# Plateaus and shoulders
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plateau:
    """One plateau or shoulder of ``eps_g(alpha)`` (``kind``).

    start, end : alpha where the feature begins and ends (a plateau: where the local exponent
        falls below / last stays below ``flat``; a shoulder: where the exponent's dip is half as deep).
    level : ``eps_g`` at the flattest point (the saddle's error, for a saddle plateau).
    length : ``end - start``.
    center : alpha of the flattest point; slope : the local exponent there.
    depth : how far the exponent dips, ``min(left peak, right peak) - slope`` (the peak on one side
        only where the feature touches an end of the curve).
    kind : "plateau" (exponent near 0) or "shoulder" (a dip of the exponent that stays above ``flat``).
    """

    start: float
    end: float
    level: float
    length: float
    center: float
    slope: float
    depth: float = math.nan
    kind: str = "plateau"

    @property
    def decades(self) -> float:
        """Extent in decades of alpha, ``log10(end / start)``."""
        return math.log10(self.end / self.start)


#: A shoulder is reported with the same fields as a plateau.
Shoulder = Plateau

#: Defaults of the finder (``theory/fixed_points.md`` §1), chosen on the labelled set of
#: ``tests/test_features.py``.
FLAT, MIN_SPAN, MIN_DROP, MIN_DEPTH, MAX_RATIO, MAX_SLOPE, MIN_WIDTH, SIGNIFICANCE = 0.15, 0.1, 0.1, 0.4, 0.5, 3.0, 0.15, 3.0


@dataclass
class PlateauSearch:
    """Result of :func:`find_plateaus`: plateaus, shoulders, the stages and the curve they were read from.

    plateaus : escaped plateaus (local exponent below ``flat``), in order; iterating over the
        result, indexing it and ``len`` see these.
    shoulders : dips of the local exponent that stay above ``flat``, in order.
    final : the flat stretch the curve ends on (a plateau not yet escaped, or the asymptotic
        error: the curve alone cannot tell which), or None.
    onset : alpha at which the starting stretch ends: the escape time of a run started on a
        plateau. NaN if the curve never leaves it.
    alpha, eps, exponent, sem : the local exponent (:func:`local_exponent`) the features were read
        from (``sem`` None for one noiseless curve).
    criterion : the thresholds used.
    """

    plateaus: list
    final: Plateau | None
    onset: float
    alpha: np.ndarray
    eps: np.ndarray
    exponent: np.ndarray
    criterion: dict = field(default_factory=dict)
    shoulders: list = field(default_factory=list)
    sem: np.ndarray | None = None

    @property
    def features(self) -> list:
        """Plateaus and shoulders together, in order of alpha."""
        return sorted(self.plateaus + self.shoulders, key=lambda f: f.center)

    @property
    def stages(self) -> int:
        """Number of learning stages: descents separated by plateaus or shoulders."""
        return len(self.plateaus) + len(self.shoulders) + 1

    def __len__(self):
        return len(self.plateaus)

    def __iter__(self):
        return iter(self.plateaus)

    def __getitem__(self, i) -> Plateau:
        return self.plateaus[i]

    def summary(self) -> str:
        """One line per plateau and shoulder: start, end, length, level, flattest exponent, depth."""
        lines = [f"{self.stages} stage(s): {len(self.plateaus)} plateau(s), {len(self.shoulders)} shoulder(s)"]
        counts = {"plateau": 0, "shoulder": 0}
        for p in self.features:
            k = counts[p.kind]
            counts[p.kind] += 1
            lines.append(f"  {p.kind} {k}: alpha {p.start:.4g} -> {p.end:.4g} (length {p.length:.4g}, "
                         f"{p.decades:.2f} decades), eps_g = {p.level:.4g}, exponent {p.slope:.2f} "
                         f"(dip {p.depth:.2f})")
        if self.final is not None:
            f = self.final
            lines.append(f"  ends flat from alpha {f.start:.4g} at eps_g = {f.level:.4g}")
        return "\n".join(lines)


def _runs(mask):
    """(start, end) index pairs of the runs of True in ``mask`` (end inclusive)."""
    m = np.concatenate(([False], mask, [False])).astype(np.int8)
    d = np.diff(m)
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0] - 1))


def features_in(le: LocalExponent, *, flat=FLAT, min_span=MIN_SPAN, min_drop=MIN_DROP, min_depth=MIN_DEPTH,
                max_ratio=MAX_RATIO, max_slope=MAX_SLOPE, min_width=MIN_WIDTH,
                significance=SIGNIFICANCE) -> PlateauSearch:
    """Plateaus and shoulders of a local exponent (criterion: ``theory/fixed_points.md`` §1).

    * flat stretches are runs with ``s < flat``; two runs are one when ``eps`` falls by less than
      ``min_drop`` decades between them (noise, or a bump without a descent);
    * the run the curve starts in is the starting error (every curve with a finite ``eps(0)`` is
      flat against ``log alpha`` as alpha -> 0); its end is ``onset``;
    * the run the curve ends in is ``final``; every other run lasting ``min_span`` decades is a
      **plateau**, however gently it was entered;
    * a **shoulder** is a local minimum of ``s`` at or above ``flat`` whose dip below the lower of
      the two neighbouring maxima (its prominence) is at least ``min_depth``, and at least
      ``significance`` standard errors where they are known, where the exponent falls to at most
      ``max_ratio`` times that maximum (the slope on a log-log plot at least halves: a dip from 7
      to 5 in an exponential cliff is no shoulder) and to at most ``max_slope`` (beyond, the curve
      is a cliff, and an ODE's wiggles there are its solver's tolerance), with a width at half
      depth of at least ``min_width`` decades.
    """
    if not (0 <= flat and np.isfinite(flat)):
        raise ValueError(f"flat must be a finite number >= 0, got {flat!r}")
    if not (0 < max_ratio <= 1):
        raise ValueError(f"max_ratio must be in (0, 1], got {max_ratio!r}")
    for name, value in (("min_span", min_span), ("min_drop", min_drop), ("min_depth", min_depth), ("max_slope", max_slope),
                        ("min_width", min_width), ("significance", significance)):
        if not (value >= 0 and np.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    a, e, s, sem = le.alpha, le.eps, le.exponent, le.sem
    criterion = dict(flat=flat, min_span=min_span, min_drop=min_drop, min_depth=min_depth, max_ratio=max_ratio,
                     max_slope=max_slope, min_width=min_width,
                     significance=significance, smooth=le.smooth)
    result = PlateauSearch(plateaus=[], final=None, onset=math.nan, alpha=a, eps=e, exponent=s, criterion=criterion,
                           sem=sem)
    if s.size < 3:
        return result
    x = np.log10(a)
    le10 = np.log10(e)

    def at(i):  # alpha at fractional grid index i
        return float(10 ** np.interp(i, np.arange(x.size), x))

    def crossing(i):
        """Fractional index where s passes ``flat`` between grid points i and i + 1."""
        if i < 0 or i + 1 >= s.size or s[i] == s[i + 1]:
            return float(min(max(i, 0), s.size - 1))
        return i + min(max((flat - s[i]) / (s[i + 1] - s[i]), 0.0), 1.0)

    runs = []
    for i0, i1 in _runs(s < flat):
        if runs and le10[runs[-1][1]] - le10[i0] < min_drop:
            runs[-1] = (runs[-1][0], i1)
        else:
            runs.append((i0, i1))
    last = s.size - 1
    if runs and runs[0][0] > 0 and le10[0] - le10[runs[0][0]] < min_drop:
        runs[0] = (0, runs[0][1])  # noise at the first points: still the starting stretch
    first_run = runs[0] if runs and runs[0][0] == 0 else None
    if first_run is None:
        result.onset = float(a[0])
    elif first_run[1] < last:
        result.onset = at(crossing(first_run[1]))
    found = []
    for i0, i1 in runs:
        if (i0, i1) == first_run:
            continue
        lo, hi = (crossing(i0 - 1), crossing(i1)) if i1 < last else (crossing(i0 - 1), float(last))
        if math.log10(at(hi) / at(lo)) < min_span - 1e-12:
            continue
        j = i0 + int(np.argmin(s[i0:i1 + 1]))
        found.append(("final" if i1 == last else "plateau", lo, hi, j))
    flat_idx = np.zeros(s.size, bool)  # inside the starting stretch, a plateau or the final stretch
    for i0, i1 in [first_run] if first_run is not None else []:
        flat_idx[i0:i1 + 1] = True
    for _, lo, hi, _ in found:
        flat_idx[int(math.floor(lo)):int(math.ceil(hi)) + 1] = True
    from scipy.signal import find_peaks, peak_widths  # imported here: scipy is slow to import

    dips, props = find_peaks(-s, prominence=max(min_depth, 1e-12))
    if dips.size:
        left, right = peak_widths(-s, dips, rel_height=0.5, prominence_data=(
            props["prominences"], props["left_bases"], props["right_bases"]))[2:]
        for j, prom, lo, hi in zip(dips, props["prominences"], left, right):
            if flat_idx[j]:
                continue
            if sem is not None and prom < significance * sem[j]:
                continue
            if s[j] > max_ratio * (s[j] + prom) or s[j] > max_slope:
                continue
            if math.log10(at(hi) / at(lo)) < min_width:
                continue
            if found and found[-1][0] == "shoulder" and lo <= found[-1][2]:  # one dip seen twice: keep the deeper
                if s[j] >= s[found[-1][3]]:
                    continue
                found.pop()
            found.append(("shoulder", float(lo), float(hi), int(j)))
    found.sort(key=lambda f: f[3])
    bounds = [first_run[1] if first_run is not None else 0] + [f[3] for f in found] + [last]
    for k, (kind, lo, hi, j) in enumerate(found):
        peaks = []
        left = s[bounds[k]:j + 1]
        right = s[j:bounds[k + 2] + 1]
        if j > 0 and left.size:
            peaks.append(float(left.max()))
        if kind != "final" and right.size:
            peaks.append(float(right.max()))
        depth = min(peaks) - float(s[j]) if peaks else math.nan
        start, end = at(lo), at(hi)
        p = Plateau(start=start, end=end, level=float(e[j]), length=end - start, center=float(a[j]),
                    slope=float(s[j]), depth=depth, kind="shoulder" if kind == "shoulder" else "plateau")
        if kind == "final":
            result.final = p
        elif kind == "plateau":
            result.plateaus.append(p)
        else:
            result.shoulders.append(p)
    return result


def plateaus_in(alpha, eps, *, smooth=None, floor=1e-9, **criterion) -> PlateauSearch:
    """Plateaus and shoulders of a learning curve ``eps(alpha)``: :func:`features_in` of its
    :func:`local_exponent` (``eps`` of shape (n,) or (replicas, n)); keywords as there."""
    return features_in(local_exponent(alpha, eps, smooth=smooth, floor=floor), **criterion)


def find_plateaus(traj: Trajectory, smooth=None, **criterion) -> PlateauSearch:
    """Plateaus and shoulders of ``traj.eps_g`` (replica mean for a simulation, with its standard
    error); keywords as :func:`features_in`.

    ``smooth`` defaults to 0 for an ODE trajectory (no noise; smoothing would only pull the
    plateau ends ~2 ``smooth`` decades earlier, towards the cliff of the escape) and to
    :data:`SIM_SMOOTH` decades otherwise.
    """
    return features_in(local_exponent(traj, smooth=smooth), **criterion)


# --------------------------------------------------------------------------------------
# Specialization of hidden nodes
# --------------------------------------------------------------------------------------
def normalized_overlaps(traj: Trajectory, replica=None) -> np.ndarray:
    """``R_in / sqrt(Q_ii T_nn)`` over time, shape (n, K, M) (cosine of student and teacher vectors)."""
    t = _single(traj, replica)
    return _ratio(t.R, np.sqrt(_diag(t.Q)[..., :, None] * np.diag(t.T)[None, None, :]))


@dataclass
class Specialization:
    """Who learns whom, when, and how (:func:`specialization`; criterion: ``theory/fixed_points.md`` §2).

    alpha : (n,) times. overlaps : (n, K, M) normalised overlaps ``r_in = R_in / sqrt(Q_ii T_nn)``
        (for a replica mean: the mean over replicas with the student nodes aligned).
    index : (n, K) specialization index: largest minus second-largest normalised overlap of each
        student node (its largest overlap when M = 1).
    best : (n, K) best-matching teacher node of each student node.
    matching : (K,) optimal one-to-one assignment of student to teacher nodes at the end
        (-1 for student nodes left over when K > M).
    alpha_specialized : (K,) alpha at which ``index`` last rises through ``threshold`` (NaN: it
        does not, e.g. when teacher nodes are nearly collinear, as for a mode teacher with p < M).
    progress : (n, K) the specialization measure: how far each node has come from its initial
        overlaps to those of its matched teacher node, **with the part shared by all teacher nodes
        removed**: ``1 - |P (r_i - tau_m)| / |P (r_i(0) - tau_m)|``, ``P`` the projection off the
        all-ones direction over teacher nodes, ``tau_mn = T_mn / sqrt(T_mm T_nn)``. Overlaps gained
        with every teacher node alike (the symmetric phase) leave it unchanged, so it does not move
        while the student sits on a symmetric fixed point; 1 at the teacher.
    sem : (n, K) standard error of ``progress`` over replicas (replica mean), else None.
    onset, end : (K,) alpha at which ``progress`` last rises through ``levels[0]`` and ``levels[1]``.
    alpha_half : (K,) alpha at which ``progress`` last rises through 1/2.
    width : (K,) ``log10(end / onset)``, decades.
    node_kind : (K,) "sudden" (width <= ``sudden``), "continuous", or "none" (the node starts at its
        teacher node, or does not get there within the run).
    kind : "sudden" when every node that specializes does so within ``sudden`` decades and all of
        them within ``together`` decades of each other (spread of ``alpha_half``); "continuous"
        when some node that specializes does not; "none" when no node specializes.
    order : (K,) student nodes by ``alpha_half`` (nodes that never get there last).
    replicas : number of replicas averaged (1: an ODE or one replica).
    """

    alpha: np.ndarray
    overlaps: np.ndarray
    index: np.ndarray
    best: np.ndarray
    matching: np.ndarray
    alpha_specialized: np.ndarray
    progress: np.ndarray
    alpha_half: np.ndarray
    width: np.ndarray
    order: np.ndarray
    threshold: float
    onset: np.ndarray = None
    end: np.ndarray = None
    node_kind: np.ndarray = None
    kind: str = "none"
    sem: np.ndarray | None = None
    replicas: int = 1
    criterion: dict = field(default_factory=dict)

    @property
    def spread(self) -> float:
        """Decades between the first and the last node's ``alpha_half`` (0: all at once)."""
        a = self.alpha_half[np.isfinite(self.alpha_half)]
        return float(np.log10(a.max() / a.min())) if a.size and a.min() > 0 else math.nan

    def summary(self) -> str:
        """One line: the kind, the widths and the spread."""
        w = ", ".join("-" if not np.isfinite(x) else f"{x:.2f}" for x in self.width)
        return (f"{self.kind} specialization: widths [{w}] decades, spread {self.spread:.2f} decades "
                f"(nodes: {', '.join(self.node_kind)})")


#: Criterion of :func:`specialization` (``theory/fixed_points.md`` §2): progress levels of onset and end,
#: the widest sudden transition and the widest spread of a joint one (decades), and the initial
#: distance below which a node counts as starting at its teacher node.
SPEC_LEVELS, SUDDEN, TOGETHER, AT_TEACHER = (0.2, 0.8), 0.5, 0.5, 1e-3


def _node_progress(r, tau, rows, cols):
    """Progress of matched nodes (n, len(rows)) and the initial distances, symmetric part removed."""
    diff = r[:, rows, :] - tau[cols][None]
    diff = diff - diff.mean(axis=-1, keepdims=True)  # projection off the all-ones direction
    dist = np.linalg.norm(diff, axis=-1)
    return 1.0 - _ratio(dist, np.broadcast_to(dist[0], dist.shape)), dist[0]


def _matching(r_end, tau):
    from scipy.optimize import linear_sum_assignment  # imported here: scipy is slow to import

    cost = np.sum((r_end[:, None, :] - tau[None, :, :]) ** 2, axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return rows, cols


def specialization(traj: Trajectory, threshold=0.5, replica=None, *, levels=SPEC_LEVELS, sudden=SUDDEN,
                   together=TOGETHER) -> Specialization:
    """Specialization of each student node: matching, progress, onset, end, width and the kind.

    The matching minimises ``sum_i |r_i(end) - tau_m(i)|^2`` (``scipy.optimize.linear_sum_assignment``;
    for orthonormal teachers the same as maximising the summed overlaps).

    Parameters
    ----------
    threshold : index value that counts as specialized, in (0, 1] (``alpha_specialized``).
    replica : for a simulation, one replica (an integer), or None for the **replica mean**: the
        nodes of every replica are matched on their own, aligned on replica 0's labels, and the
        progress averaged (with its standard error); node labels differ between replicas, so the
        raw replica mean of ``R`` would wash the specialization out. Ignored for an ODE.
    levels, sudden, together : the criterion of the kind (module constants ``SPEC_LEVELS``,
        ``SUDDEN``, ``TOGETHER``).
    """
    if not (0 < threshold <= 1):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    lo_level, hi_level = levels
    if not (0 < lo_level < 0.5 < hi_level < 1):
        raise ValueError(f"levels must satisfy 0 < low < 1/2 < high < 1, got {levels!r}")
    if not (sudden > 0 and together > 0):
        raise ValueError(f"sudden and together must be > 0 decades, got {sudden!r}, {together!r}")
    d = np.sqrt(np.diag(traj.T))
    tau = traj.T / np.outer(d, d)  # overlaps of a student node equal to teacher node m: row m
    if traj.eps_g.ndim == 2 and replica is None:
        keep = np.ones(traj.replicas, bool) if traj.diverged is None else ~np.asarray(traj.diverged, bool)
        reps = [traj.replica(int(k)) for k in np.nonzero(keep)[0]]
        if not reps:
            raise ValueError("every replica diverged: no specialization to measure")
    else:
        reps = [_single(traj, 0 if replica is None else replica)]
    K = reps[0].K
    ref_rows = ref_cols = None
    overlaps, progs, d0s = [], [], []
    for t in reps:
        r = normalized_overlaps(t)
        rows, cols = _matching(r[-1], tau)
        if ref_rows is None:
            ref_rows, ref_cols = rows, cols
            perm = np.arange(K)
        else:  # node i of this replica is the one matched to the teacher node that node i of replica 0 matches
            by_teacher = dict(zip(cols, rows))
            used = [by_teacher[c] for c in ref_cols]
            rest = [i for i in range(K) if i not in used]
            perm = np.empty(K, int)
            perm[ref_rows] = used
            perm[[i for i in range(K) if i not in ref_rows]] = rest
        r = r[:, perm, :]
        prog = np.full(r.shape[:2], math.nan)
        d0 = np.full(K, math.nan)
        if r.shape[-1] > 1:
            prog[:, ref_rows], d0[ref_rows] = _node_progress(r, tau, ref_rows, ref_cols)
        overlaps.append(r)
        progs.append(prog)
        d0s.append(d0)
    r = np.mean(overlaps, axis=0)
    progress = np.mean(progs, axis=0)
    sem = None
    if len(progs) > 1:
        sem = np.std(progs, axis=0, ddof=1) / math.sqrt(len(progs))
    d0 = np.mean(d0s, axis=0)
    matching = np.full(K, -1)
    matching[ref_rows] = ref_cols
    ranked = np.sort(r, axis=-1)
    index = ranked[..., -1] - ranked[..., -2] if r.shape[-1] > 1 else ranked[..., -1]  # largest - second
    a = traj.alpha
    when = np.array([_last_crossing(a, index[:, i], threshold) for i in range(K)])
    half, onset, end, width = (np.full(K, math.nan) for _ in range(4))
    node_kind = np.array(["none"] * K, dtype=object)
    scale = np.linalg.norm(tau - tau.mean(axis=-1, keepdims=True), axis=-1)  # |P tau_m|
    for i, m in zip(ref_rows, ref_cols):
        if not d0[i] > AT_TEACHER * max(scale[m], 1e-300):
            continue  # starts at its teacher node: nothing to specialize
        half[i] = _last_crossing(a, progress[:, i], 0.5)
        onset[i] = _last_crossing(a, progress[:, i], lo_level)
        end[i] = _last_crossing(a, progress[:, i], hi_level)
        if np.isfinite(end[i]) and onset[i] > 0:
            width[i] = math.log10(end[i] / onset[i])
            node_kind[i] = "sudden" if width[i] <= sudden else "continuous"
    spec = Specialization(alpha=a, overlaps=r, index=index, best=np.argmax(r, axis=-1), matching=matching,
                          alpha_specialized=when, progress=progress, alpha_half=half, width=width,
                          order=np.argsort(half, kind="stable"), threshold=float(threshold), onset=onset, end=end,
                          node_kind=node_kind, sem=sem, replicas=len(reps),
                          criterion=dict(levels=tuple(levels), sudden=sudden, together=together))
    done = node_kind != "none"
    if not done.any():
        spec.kind = "none"
    elif np.all(width[done] <= sudden) and not (spec.spread > together):
        spec.kind = "sudden"
    else:
        spec.kind = "continuous"
    return spec


# --------------------------------------------------------------------------------------
# The mode-resolved picture
# --------------------------------------------------------------------------------------
@dataclass
class ModePicture:
    """Learning resolved along the eigen-directions of ``P = A L^2 A^T`` (:func:`mode_picture`).

    alpha : (n,). strength : (n, p) eigenvalues of ``P`` (descending). directions : (n, K, p)
        their eigenvectors ``u_k``.
    overlap : (n, p) student-teacher overlap along ``u_k``,
        ``u^T R u / sqrt(u^T Q u  u^T T u)`` (1: that direction is learned).
    residual : (n, p) squared weight error along ``u_k``, ``u^T (Q - R - R^T + T) u``.
    learned_at : (p,) alpha at which ``overlap`` last rises through ``learned`` (NaN: not yet).
    lam : (n, p) mode strengths, rank : (n, p) modes ordered by ``|lam|`` (largest first).
    mode_overlap : (n, p, M) normalised overlaps of each student mode with each teacher node,
        ``S_mn / sqrt(Rm_mm T_nn)``, or (n, p, p_t) with the teacher's modes when the teacher is
        given; None when the trajectory has no ``S``.
    """

    alpha: np.ndarray
    strength: np.ndarray
    directions: np.ndarray
    overlap: np.ndarray
    residual: np.ndarray
    learned_at: np.ndarray
    learned: float
    lam: np.ndarray | None
    rank: np.ndarray | None
    mode_overlap: np.ndarray | None

    def unlearned(self, alpha) -> np.ndarray:
        """Directions (indices into ``strength``) not yet learned at ``alpha``."""
        i = int(np.argmin(np.abs(self.alpha - alpha)))
        return np.nonzero(self.overlap[i] < self.learned)[0]

    def attribute(self, plateaus) -> list:
        """For each plateau, the directions still unlearned at its flattest point."""
        return [self.unlearned(p.center) for p in plateaus]


def mode_picture(traj: Trajectory, teacher=None, P=None, learned=0.9, replica=None) -> ModePicture:
    """Student-teacher overlap along the eigenvectors of ``P = A L^2 A^T`` over time.

    Needs K = M with student node i meant to learn teacher node i (the paper's setting: ``A``
    and ``lam`` copied from the teacher). ``P`` is taken from the trajectory's ``A`` and ``lam``
    (``C = A diag(lam)``, ``P = C C^T``), from ``params["P"]`` of a reduced-form ODE, or given (K x K).
    ``teacher``: a mode :class:`~onlinemdl.model.Teacher`, to resolve the student modes against
    the teacher's modes. ``replica``: one replica of a simulation, or None for the replica mean.
    """
    if not (0 < learned <= 1):
        raise ValueError(f"learned must be in (0, 1], got {learned!r}")
    t = _single(traj, replica)
    K, M = t.K, t.M
    if K != M:
        raise ValueError(f"mode_picture needs K == M (node i learns teacher node i), got K={K}, M={M}")
    n = t.alpha.size
    if P is None and t.A is None:
        P = t.params.get("P")  # recorded by integrate(form="reduced")
    if P is None:
        if t.A is None or t.lam is None:
            raise ValueError("P must be given for a trajectory without A and lam (reduced form)")
        C = t.A * t.lam[:, None, :]  # C = A diag(lam), (n, K, p)
        Ps = C @ np.swapaxes(C, -1, -2)
        p = t.lam.shape[-1]
    else:
        P = np.asarray(P, float)
        if P.shape != (K, K):
            raise ValueError(f"P must be (K, K) = ({K}, {K}), got {P.shape}")
        Ps = np.broadcast_to(P, (n, K, K))
        p = int(np.linalg.matrix_rank(P))
    w, U = np.linalg.eigh(Ps)
    w, U = w[:, ::-1][:, :p], U[:, :, ::-1][:, :, :p]  # the p non-zero directions, strongest first
    def form(X):  # u_k^T X u_k at every time
        return np.einsum("nkp,nkl,nlp->np", U, X, U)

    uQu, uRu, uTu = form(t.Q), form(t.R), form(np.broadcast_to(t.T, t.Q.shape))
    overlap = _ratio(uRu, np.sqrt(np.maximum(uQu * uTu, 0.0)))
    residual = form(t.Q - t.R - np.swapaxes(t.R, -1, -2) + t.T)
    learned_at = np.array([_last_crossing(t.alpha, overlap[:, k], learned) for k in range(p)])
    lam = rank = None
    if t.lam is not None:
        lam = np.asarray(t.lam)
        rank = np.argsort(-np.abs(lam), axis=-1, kind="stable")
    return ModePicture(alpha=t.alpha, strength=w, directions=U, overlap=overlap, residual=residual,
                       learned_at=learned_at, learned=float(learned), lam=lam, rank=rank,
                       mode_overlap=mode_overlaps(t, teacher) if t.S is not None else None)


def mode_overlaps(traj: Trajectory, teacher=None, replica=None) -> np.ndarray:
    """Normalised overlaps of the student modes with the teacher, over time.

    Without ``teacher``: with each teacher node, ``S_mn / sqrt(Rm_mm T_nn)``, shape (n, p, M).
    With a mode teacher (``B = Ct Xit^T``, ``Ct = At diag(lamt)`` of full column rank): with each
    teacher mode, ``Sm = Xi^T Xit / N = S (Ct^T)^+``, normalised by ``sqrt(Rm_mm Tm_nn)``,
    ``Tm = Xit^T Xit / N``; shape (n, p, p_t).
    """
    t = _single(traj, replica)
    if t.S is None or t.Rm is None:
        raise ValueError("mode_overlaps needs a mode-student trajectory (Rm and S)")
    rm = np.sqrt(_diag(t.Rm))[..., :, None]
    if teacher is None:
        return _ratio(t.S, rm * np.sqrt(np.diag(t.T))[None, None, :])
    if getattr(teacher, "Xi", None) is None:
        raise ValueError("teacher must be a mode teacher (Teacher.modes) with A, lam and Xi")
    Ct = teacher.A * teacher.lam
    Sm = t.S @ np.linalg.pinv(Ct.T)
    Tm = teacher.Xi.T @ teacher.Xi / teacher.N
    return _ratio(Sm, rm * np.sqrt(np.diag(Tm))[None, None, :])


# --------------------------------------------------------------------------------------
# The finite-N theory against simulations
# --------------------------------------------------------------------------------------
@dataclass
class FluctuationCheck:
    """The finite-N theory of an ODE against the replicas of a simulation (``theory/finite_size.md`` §8).

    Attributes
    ----------
    alpha : the compared output times (after the start, before ``fluct_valid_until``).
    sd_ratio : measured / predicted standard deviation across replicas, per observable: "eps_g"
        (n,), "Q" (n, K, K), "R" (n, K, M); NaN where the prediction is below ``rel_floor`` of
        its largest value (entries that hardly fluctuate).
    gap, se : replica mean of eps_g minus the ODE, and its standard error.
    bias : the predicted gap (``eps_g_bias``); :attr:`z` ``= (gap - bias) / se``.
    replicas : number of replicas.
    """

    alpha: np.ndarray
    sd_ratio: dict
    gap: np.ndarray
    se: np.ndarray
    bias: np.ndarray
    replicas: int

    @property
    def z(self) -> np.ndarray:
        """The measured gap minus the predicted bias, in standard errors."""
        return (self.gap - self.bias) / self.se

    @property
    def worst_sd(self) -> float:
        """Largest |measured / predicted sd - 1| over every compared entry."""
        return max(float(np.nanmax(np.abs(r - 1))) for r in self.sd_ratio.values())

    def summary(self) -> str:
        """One line: ranges of the sd ratios and the largest |z| of the bias."""
        parts = [f"{name} {np.nanmin(r):.3f}-{np.nanmax(r):.3f}" for name, r in self.sd_ratio.items()]
        return (f"{self.replicas} replicas, {self.alpha.size} times: measured/predicted sd " + ", ".join(parts)
                + f"; max |gap - bias| {np.max(np.abs(self.z)):.1f} s.e. (max |gap| {np.max(np.abs(self.gap / self.se)):.1f})")


def check_fluctuations(theory: Trajectory, sim: Trajectory, rel_floor: float = 1e-3) -> FluctuationCheck:
    """Compare ``integrate(..., fluctuations=True)`` with a simulation's replicas at the same times.

    Raises ValueError when ``theory`` has no finite-N prediction, ``sim`` has fewer than 2
    replicas, their output times differ, or no output time after the start lies before
    ``fluct_valid_until``.
    """
    if theory.eps_g_sd is None:
        raise ValueError("theory has no finite-N prediction: use integrate(..., fluctuations=True)")
    if sim.eps_g.ndim != 2 or sim.eps_g.shape[0] < 2:
        raise ValueError("sim must have at least 2 replicas")
    if sim.alpha.shape != theory.alpha.shape or not np.allclose(sim.alpha, theory.alpha, rtol=1e-9, atol=1e-12):
        raise ValueError("theory and sim must have the same output times alpha")
    ok = (theory.alpha > theory.alpha[0]) & (theory.alpha < theory.fluct_valid_until)
    if not ok.any():
        raise ValueError(f"no output time after the start lies before fluct_valid_until = "
                         f"{theory.fluct_valid_until:.4g}: the expansion holds nowhere to compare")
    n = sim.eps_g.shape[0]

    def ratio(measured, predicted):
        big = predicted > rel_floor * np.max(predicted)
        return np.where(big, measured / np.where(big, predicted, 1.0), np.nan)

    sd = {"eps_g": sim.eps_g[:, ok].std(0, ddof=1), "Q": sim.Q[:, ok].std(0, ddof=1), "R": sim.R[:, ok].std(0, ddof=1)}
    pred = {"eps_g": theory.eps_g_sd[ok], "Q": theory.Q_sd[ok], "R": theory.R_sd[ok]}
    gap = sim.eps_g[:, ok].mean(0) - theory.eps_g[ok]
    se = sd["eps_g"] / math.sqrt(n)
    bias = theory.eps_g_bias[ok]
    return FluctuationCheck(alpha=theory.alpha[ok], sd_ratio={k: ratio(sd[k], pred[k]) for k in sd}, gap=gap, se=se,
                            bias=bias, replicas=n)
