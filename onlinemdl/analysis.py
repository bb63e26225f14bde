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
# Plateaus
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plateau:
    """One plateau of ``eps_g(alpha)``.

    start, end : alpha where the decay exponent falls below / last stays below ``flat``.
    level : ``eps_g`` at the flattest point (the saddle's error, for a saddle plateau).
    length : ``end - start``.
    center : alpha of the flattest point; slope : the decay exponent there.
    """

    start: float
    end: float
    level: float
    length: float
    center: float
    slope: float

    @property
    def decades(self) -> float:
        """Extent in decades of alpha, ``log10(end / start)``."""
        return math.log10(self.end / self.start)


@dataclass
class PlateauSearch:
    """Result of :func:`find_plateaus`: the plateaus, the stages and the curve they were read from.

    plateaus : escaped plateaus, in order (iterate over the result, or index it).
    final : the flat stretch the curve ends on (a plateau not yet escaped, or the asymptotic
        error: the curve alone cannot tell which), or None.
    onset : alpha at which the starting stretch ends (last point with exponent below ``flat``
        before the first descent): the escape time of a run started on a plateau. NaN if the
        curve never descends.
    alpha, eps, exponent : the smoothed curve on its uniform log-alpha grid and its local
        decay exponent ``s = -d ln eps / d ln alpha``.
    criterion : the thresholds used.
    """

    plateaus: list
    final: Plateau | None
    onset: float
    alpha: np.ndarray
    eps: np.ndarray
    exponent: np.ndarray
    criterion: dict = field(default_factory=dict)

    @property
    def stages(self) -> int:
        """Number of learning stages: descents separated by the plateaus."""
        return len(self.plateaus) + 1

    def __len__(self):
        return len(self.plateaus)

    def __iter__(self):
        return iter(self.plateaus)

    def __getitem__(self, i) -> Plateau:
        return self.plateaus[i]

    def summary(self) -> str:
        """One line per plateau: start, end, length, level, flattest exponent."""
        lines = [f"{self.stages} stage(s), {len(self)} plateau(s)"]
        for k, p in enumerate(self.plateaus):
            lines.append(f"  plateau {k}: alpha {p.start:.4g} -> {p.end:.4g} (length {p.length:.4g}, "
                         f"{p.decades:.2f} decades), eps_g = {p.level:.4g}, exponent {p.slope:.2f}")
        if self.final is not None:
            f = self.final
            lines.append(f"  ends flat from alpha {f.start:.4g} at eps_g = {f.level:.4g}")
        return "\n".join(lines)


def decay_exponent(alpha, eps, *, smooth=0.05, floor=1e-9, per_decade=100):
    """Local decay exponent ``s = -d ln eps / d ln alpha`` of a learning curve.

    The curve is resampled onto ``per_decade`` points per decade of alpha (points falling in one
    grid cell are averaged, gaps interpolated), smoothed with a Gaussian of width ``smooth``
    decades (derivative of the Gaussian-filtered ``log eps``; odd reflection at the ends keeps
    the end slopes), and analysed only up to where ``eps`` first falls below
    ``floor * max(eps)`` (converged; the logarithm there is rounding noise).

    Returns
    -------
    alpha_u, eps_u, s : grid, smoothed curve and exponent (empty when fewer than 3 usable points).
    """
    alpha = np.asarray(alpha, float).ravel()
    eps = np.asarray(eps, float).ravel()
    if alpha.shape != eps.shape:
        raise ValueError(f"alpha and eps must have the same length, got {alpha.size} and {eps.size}")
    if not (smooth >= 0 and np.isfinite(smooth)):
        raise ValueError(f"smooth must be a finite number >= 0 (decades), got {smooth!r}")
    if not (0 <= floor < 1):
        raise ValueError(f"floor must be in [0, 1), got {floor!r}")
    if not (isinstance(per_decade, (int, np.integer)) and per_decade >= 4):
        raise ValueError(f"per_decade must be an integer >= 4, got {per_decade!r}")
    ok = (alpha > 0) & np.isfinite(eps)
    alpha, eps = alpha[ok], eps[ok]
    if eps.size:
        low = np.nonzero(eps <= floor * np.max(eps))[0]
        n = low[0] if low.size else eps.size
        alpha, eps = alpha[:n], eps[:n]
    empty = np.empty(0)
    if alpha.size < 3 or alpha[-1] <= alpha[0]:
        return empty, empty, empty
    x, y = np.log10(alpha), np.log10(eps)
    cell = np.rint((x - x[0]) * per_decade).astype(int)
    xu = x[0] + np.arange(cell[-1] + 1) / per_decade
    counts = np.bincount(cell)
    sums = np.bincount(cell, weights=y)
    filled = counts > 0
    yu = np.interp(xu, xu[filled], sums[filled] / counts[filled])
    if smooth > 0:
        sigma = smooth * per_decade
        from scipy.ndimage import gaussian_filter1d  # imported here: scipy is slow to import

        pad = int(math.ceil(4 * sigma))
        padded = np.pad(yu, pad, mode="reflect", reflect_type="odd")
        ys = gaussian_filter1d(padded, sigma)[pad:pad + yu.size]
        s = -gaussian_filter1d(padded, sigma, order=1)[pad:pad + yu.size] * per_decade
    else:
        ys = yu
        s = -np.gradient(yu, 1.0 / per_decade) if yu.size > 1 else np.zeros(1)
    return 10.0 ** xu, 10.0 ** ys, s


def plateaus_in(alpha, eps, *, flat=0.6, drop=1.0, min_span=0.2, smooth=0.05, floor=1e-9) -> PlateauSearch:
    """Plateaus of a learning curve ``eps(alpha)`` (criterion: ``theory/fixed_points.md``).

    With ``s`` the local decay exponent (:func:`decay_exponent`), a plateau is a stretch with
    ``s < flat`` that comes after a descent (``s > drop``) and lasts at least ``min_span``
    decades of alpha; it ends at the last point with ``s < flat`` before ``s`` exceeds ``drop``
    again (hysteresis: moderate bumps ``flat <= s <= drop`` stay inside the plateau). The
    stretch before the first descent is the starting error, not a plateau (every smooth curve
    is flat against ``log alpha`` as alpha -> 0).

    Parameters
    ----------
    flat, drop : exponent thresholds, ``0 <= flat < drop``.
    min_span : least extent of a plateau in decades of alpha.
    smooth, floor : smoothing width (decades) and convergence floor, see :func:`decay_exponent`.
    """
    if not (0 <= flat < drop):
        raise ValueError(f"flat and drop must satisfy 0 <= flat < drop, got flat={flat!r}, drop={drop!r}")
    if not (min_span >= 0):
        raise ValueError(f"min_span must be >= 0 (decades), got {min_span!r}")
    a, e, s = decay_exponent(alpha, eps, smooth=smooth, floor=floor)
    criterion = dict(flat=flat, drop=drop, min_span=min_span, smooth=smooth, floor=floor)

    def crossing(i):
        """alpha where s passes ``flat`` between grid points i and i + 1 (log-interpolated)."""
        if i < 0 or i + 1 >= s.size or s[i] == s[i + 1]:
            return float(a[min(max(i, 0), s.size - 1)])
        f = min(max((flat - s[i]) / (s[i + 1] - s[i]), 0.0), 1.0)
        return float(a[i] * (a[i + 1] / a[i]) ** f)

    def plateau(i0, i1):
        j = i0 + int(np.argmin(s[i0:i1 + 1]))
        start, end = crossing(i0 - 1), crossing(i1)
        return Plateau(start=start, end=end, level=float(e[j]), length=end - start, center=float(a[j]),
                       slope=float(s[j]))

    found, state, i0, i1 = [], "start", 0, 0
    for i, si in enumerate(s):
        if state == "flat":
            if si < flat:
                i1 = i
            elif si > drop:
                p = plateau(i0, i1)
                if p.decades >= min_span:
                    found.append(p)
                state = "descent"
        elif si > drop:
            state = "descent"
        elif state == "descent" and si < flat:
            state, i0, i1 = "flat", i, i
    final = plateau(i0, i1) if state == "flat" else None
    if final is not None and final.decades < min_span:
        final = None
    steep = np.nonzero(s > drop)[0]
    onset = math.nan
    if steep.size:
        before = np.nonzero(s[:steep[0]] < flat)[0]
        onset = crossing(before[-1]) if before.size else float(a[0])
    return PlateauSearch(plateaus=found, final=final, onset=onset, alpha=a, eps=e, exponent=s,
                         criterion=criterion)


def find_plateaus(traj: Trajectory, smooth=None, **criterion) -> PlateauSearch:
    """Plateaus of ``traj.eps_g`` (replica mean for a simulation); keywords as :func:`plateaus_in`.

    ``smooth`` defaults to 0 for an ODE trajectory (no noise; smoothing would only pull the
    plateau ends ~2 ``smooth`` decades earlier, towards the cliff of the escape) and to 0.05
    decades otherwise.
    """
    if smooth is None:
        smooth = 0.0 if traj.kind == "ode" else 0.05
    return plateaus_in(traj.alpha, _single(traj).eps_g, smooth=smooth, **criterion)


# --------------------------------------------------------------------------------------
# Specialization of hidden nodes
# --------------------------------------------------------------------------------------
def normalized_overlaps(traj: Trajectory, replica=None) -> np.ndarray:
    """``R_in / sqrt(Q_ii T_nn)`` over time, shape (n, K, M) (cosine of student and teacher vectors)."""
    t = _single(traj, replica)
    return _ratio(t.R, np.sqrt(_diag(t.Q)[..., :, None] * np.diag(t.T)[None, None, :]))


@dataclass
class Specialization:
    """Who learns whom, and when (:func:`specialization`).

    alpha : (n,) times. overlaps : (n, K, M) normalised overlaps ``r_in = R_in / sqrt(Q_ii T_nn)``.
    index : (n, K) specialization index: largest minus second-largest normalised overlap of each
        student node (its largest overlap when M = 1).
    best : (n, K) best-matching teacher node of each student node.
    matching : (K,) optimal one-to-one assignment of student to teacher nodes at the end
        (-1 for student nodes left over when K > M).
    alpha_specialized : (K,) alpha at which ``index`` last rises through ``threshold`` (NaN: it
        does not, e.g. when teacher nodes are nearly collinear, as for a mode teacher with p < M).
    progress : (n, K) how far each node has come from its initial overlaps to those of its
        matched teacher node, ``1 - |r_i - tau_m| / |r_i(0) - tau_m|`` with
        ``tau_mn = T_mn / sqrt(T_mm T_nn)``: overlaps shared with every teacher node (the
        unspecialized, symmetric phase) do not count as progress.
    alpha_half : (K,) alpha at which ``progress`` last rises through 1/2.
    width : (K,) decades of alpha over which ``progress`` last rises from 0.2 to 0.8: a fraction of
        a decade for a sudden (classic) transition, a decade or more for a continuous one.
    order : (K,) student nodes by ``alpha_half`` (nodes that never get there last).
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

    @property
    def spread(self) -> float:
        """Decades between the first and the last node's ``alpha_half`` (0: all at once)."""
        a = self.alpha_half[np.isfinite(self.alpha_half)]
        return float(np.log10(a.max() / a.min())) if a.size and a.min() > 0 else math.nan


def specialization(traj: Trajectory, threshold=0.5, replica=0) -> Specialization:
    """Specialization of each student node: best teacher, index, matching, progress, times, order.

    The matching minimises ``sum_i |r_i(end) - tau_m(i)|^2`` (``scipy.optimize.linear_sum_assignment``;
    for orthonormal teachers the same as maximising the summed overlaps).

    Parameters
    ----------
    threshold : index value that counts as specialized, in (0, 1].
    replica : which replica of a simulation (node labels differ between replicas, so they are
        analysed one at a time, never averaged; ignored for an ODE trajectory).
    """
    if not (0 < threshold <= 1):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    r = normalized_overlaps(traj, replica)
    K = r.shape[1]
    ranked = np.sort(r, axis=-1)
    index = ranked[..., -1] - ranked[..., -2] if r.shape[-1] > 1 else ranked[..., -1]  # largest - second
    d = np.sqrt(np.diag(traj.T))
    tau = traj.T / np.outer(d, d)  # overlaps of a student node equal to teacher node m: row m
    cost = np.sum((r[-1][:, None, :] - tau[None, :, :]) ** 2, axis=-1)
    from scipy.optimize import linear_sum_assignment  # imported here: scipy is slow to import

    rows, cols = linear_sum_assignment(cost)
    matching = np.full(K, -1)
    matching[rows] = cols
    progress = np.full(r.shape[:2], math.nan)
    dist = np.linalg.norm(r[:, rows, :] - tau[cols][None], axis=-1)
    progress[:, rows] = 1.0 - _ratio(dist, np.broadcast_to(dist[0], dist.shape))
    a = traj.alpha
    when = np.array([_last_crossing(a, index[:, i], threshold) for i in range(K)])
    half = np.full(K, math.nan)
    width = np.full(K, math.nan)
    for i in rows[dist[0] > 0]:
        half[i] = _last_crossing(a, progress[:, i], 0.5)
        lo, hi = _last_crossing(a, progress[:, i], 0.2), _last_crossing(a, progress[:, i], 0.8)
        if np.isfinite(hi) and lo > 0:
            width[i] = math.log10(hi / lo)
    return Specialization(alpha=a, overlaps=r, index=index, best=np.argmax(r, axis=-1), matching=matching,
                          alpha_specialized=when, progress=progress, alpha_half=half, width=width,
                          order=np.argsort(half, kind="stable"), threshold=float(threshold))


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
