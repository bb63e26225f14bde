"""The stages of mode learning: a linear theory from the spectrum of ``P = A L^2 A^T``, and statistics over draws.

:func:`stage_theory` predicts, for a mode student with only ``Xi`` trained (``A`` and ``lam`` those of
the teacher), the rate at which each eigen-direction is learned, the time scale of each stage and
the error the curve sits at before it; derivation and where it breaks down:
``theory/fixed_points.md`` §5. :func:`ensemble` runs many teacher/student draws through
:func:`onlinemdl.scan` (a resumable store, any executor) and returns the distribution of what
:mod:`onlinemdl.analysis` finds in them: stages, plateaus and shoulders, stuck draws,
specialization kinds, and the measured stage times against the prediction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import analysis
from .recipes import networks, run_ode, run_simulation
from .scan import scan


# --------------------------------------------------------------------------------------
# Linear theory of the stages
# --------------------------------------------------------------------------------------
@dataclass
class StagePrediction:
    """What the linear theory predicts for one teacher/student pair (:func:`stage_theory`).

    P : (p,) non-zero eigenvalues of ``P = A L^2 A^T``, descending.
    g : the effective gain, ``mean_i G_ii`` (the P-only theory takes ``G = g I``).
    hessian : (p,) eigenvalues ``h_k`` of ``H = C^T G C`` (descending; ``g P_k`` in the P-only theory).
    rates : (p,) decay rates of the error along the eigen-directions of ``H`` (eigenvalues of
        ``2 eta diag(h) - eta^2 h h^T``; ``2 eta h_k`` without the ``eta^2`` term). A negative rate:
        ``eta`` beyond the linear stability limit.
    times : (p,) ``ln(decay) / rates``: when the error along direction ``k`` has fallen ``decay``-fold
        (default 10): the predicted time at which direction ``k`` is learned, the end of stage ``k``.
    levels : (p,) the error while direction ``k`` is being learned and the faster ones are done,
        ``1/2 sum_{j >= k} h_j e_j(0)``: the level of the stage that ends at ``times[k]``.
    e0 : (p,) initial squared weight error along each direction (``2 (ln N)^(-1/3)`` each for a fresh
        draw, or the student's own).
    eta_max : ``2 / tr H``, the largest learning rate at which every rate is positive (linear stability).
    eta, use_G : the learning rate; whether the full ``G`` (True) or ``g I`` (P-only) was used.
    """

    P: np.ndarray
    g: float
    hessian: np.ndarray
    rates: np.ndarray
    times: np.ndarray
    levels: np.ndarray
    e0: np.ndarray
    eta: float
    use_G: bool
    eta_max: float = math.inf
    _H: np.ndarray = field(repr=False, default=None)
    _E0: np.ndarray = field(repr=False, default=None)

    def curve(self, alpha) -> np.ndarray:
        """The linear theory's learning curve ``eps(alpha) = 1/2 tr(H E(alpha))`` from ``E(0)``,
        ``dE/dalpha = -eta (H E + E H) + eta^2 H tr(H E)``."""
        alpha = np.asarray(alpha, float)
        p = self._H.shape[0]
        Ip = np.eye(p)
        L = -self.eta * (np.kron(self._H, Ip) + np.kron(Ip, self._H)) + self.eta**2 * np.outer(
            self._H.ravel(), self._H.ravel())
        w, V = np.linalg.eig(L)
        c = np.linalg.solve(V, self._E0.ravel())
        E = np.real((V[None] * (np.exp(np.outer(alpha, w)) * c)[:, None, :]).sum(-1))
        return np.maximum(0.5 * E @ self._H.ravel(), 0.0)

    def features(self, alpha) -> analysis.PlateauSearch:
        """Plateaus and shoulders of the predicted curve on ``alpha`` (the same finder as for runs)."""
        alpha = np.asarray(alpha, float)
        alpha = alpha[alpha > 0]
        return analysis.plateaus_in(alpha, self.curve(alpha), smooth=0.0)

    def summary(self) -> str:
        lines = [f"P eigenvalues {np.array2string(self.P, precision=4)}, gain g = {self.g:.4g}, "
                 f"{'H = C^T G C' if self.use_G else 'H = g P'}, eta = {self.eta:g} (linear stability up to {self.eta_max:.4g})"]
        for k in range(self.P.size):
            lines.append(f"  stage {k}: rate {self.rates[k]:.3g}, learned at alpha = {self.times[k]:.4g}, "
                         f"level before it {self.levels[k]:.3g}")
        return "\n".join(lines)


def gain_matrix(T, v, vt=None) -> np.ndarray:
    """``G_ij = v_i v_j E[g'(v_i) g'(v_j)]`` at the teacher (erf), the Hessian of ``eps_g`` in a student
    direction orthogonal to the teacher's weights: ``(2 / pi) v_i v_j / sqrt((1 + T_ii)(1 + T_jj) - T_ij^2)``."""
    T = np.asarray(T, float)
    v = np.asarray(v, float)
    d = np.diag(T)
    return (2 / math.pi) * np.outer(v, v) / np.sqrt((1 + d[:, None]) * (1 + d[None, :]) - T**2)


def stage_theory(teacher, eta, student=None, *, use_G=True, decay=10.0) -> StagePrediction:
    """Predicted stages of a mode student with only ``Xi`` trained, from the spectrum of ``P``.

    Linearised at the teacher (``Xi = Xit``), the error ``Delta = Xi - Xit`` orthogonal to the
    teacher's modes has ``eps_g = 1/2 tr(H E)``, ``E = Delta^T Delta / N``, ``H = C^T G C`` with
    ``C = A diag(lam)`` and ``G`` the gain matrix (:func:`gain_matrix`), and
    ``dE/dalpha = -eta (H E + E H) + eta^2 H tr(H E)`` (``theory/fixed_points.md`` §5). The non-zero
    eigenvalues of ``H`` are those of ``G^(1/2) P G^(1/2)``, i.e. ``g P_k`` when ``G = g I``
    (``use_G=False``, the P-only theory).

    Parameters
    ----------
    teacher : a mode teacher (``Teacher.modes``); the student's ``A``, ``lam`` and ``v`` are its own.
    eta : learning rate.
    student : the student (``Student.from_teacher_modes``) for its own initial error; default the
        expected one of a fresh draw, ``E(0) = 2 (ln N)^(-1/3) I``.
    decay : the fall of a direction's error that counts as learned (``times``).
    """
    if not decay > 1:
        raise ValueError(f"decay must be > 1, got {decay!r}")
    if getattr(teacher, "Xi", None) is None:
        raise ValueError("teacher must be a mode teacher (Teacher.modes) with A, lam and Xi")
    if getattr(teacher, "activation", "erf") != "erf":
        raise ValueError("stage_theory needs the erf activation (the gain matrix is that of erf)")
    if not (eta > 0 and np.isfinite(eta)):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    C = teacher.A * teacher.lam
    T = teacher.T
    v = teacher.vt
    G = gain_matrix(T, v)
    g = float(np.mean(np.diag(G)))
    p = C.shape[1]
    P = np.sort(np.linalg.eigvalsh(C @ C.T))[::-1][:p]
    H = C.T @ (G if use_G else g * np.eye(G.shape[0])) @ C
    h, U = np.linalg.eigh(H)
    order = np.argsort(h)[::-1]
    h, U = h[order], U[:, order]
    if student is None:
        E0 = 2 * (math.log(teacher.N) ** (-1 / 3)) * np.eye(p)
    else:
        if getattr(student, "Xi", None) is None or student.Xi.shape != teacher.Xi.shape:
            raise ValueError("student must be a mode student with the teacher's number of modes")
        D = student.Xi - teacher.Xi
        E0 = D.T @ D / teacher.N
    e0 = np.einsum("ik,ij,jk->k", U, E0, U)
    rate_matrix = 2 * eta * np.diag(h) - eta**2 * np.outer(h, h)
    rates = np.sort(np.linalg.eigvals(rate_matrix).real)[::-1]
    with np.errstate(divide="ignore"):
        times = np.where(rates > 0, math.log(decay) / rates, np.inf)
    levels = np.array([0.5 * np.sum(h[k:] * e0[k:]) for k in range(p)])
    return StagePrediction(P=P, g=g, hessian=h, rates=rates, times=times, levels=levels, e0=e0, eta=float(eta),
                           use_G=use_G, eta_max=2.0 / float(np.sum(h)), _H=H, _E0=E0)


# --------------------------------------------------------------------------------------
# Statistics over draws
# --------------------------------------------------------------------------------------
@dataclass
class Ensemble:
    """What :func:`ensemble` measured over teacher/student draws; arrays are (len(eta), draws).

    eta : (e,) learning rates. draws : (d,) draw numbers (teacher seed ``d``, student seed ``d + 1``).
    plateaus, shoulders : counts of plateaus and shoulders per run; stages = plateaus + shoulders + 1.
    final : eps_g at alpha_max (replica mean for simulations; inf for a diverged run);
        stuck : ``final > threshold`` (diverged runs included; ``diverged`` tells them apart).
    kinds : specialization kind per run ("sudden", "continuous", "none").
    features : per run, the list of plateaus and shoulders found (``analysis.Plateau``).
    predicted : per draw (teacher), the :class:`StagePrediction` at each eta, (e, d) object array.
    learned_at : per run, alpha at which each eigen-direction of ``P`` is learned (``mode_picture``).
    status : run status. threshold : stuck threshold. store : the scan's store.
    """

    eta: np.ndarray
    draws: np.ndarray
    plateaus: np.ndarray
    shoulders: np.ndarray
    final: np.ndarray
    stuck: np.ndarray
    kinds: np.ndarray
    features: np.ndarray
    predicted: np.ndarray
    learned_at: np.ndarray
    status: np.ndarray
    threshold: float
    store: str
    engine: str

    @property
    def stages(self) -> np.ndarray:
        return self.plateaus + self.shoulders + 1

    @property
    def diverged(self) -> np.ndarray:
        """Runs whose weights ran away (status "diverged")."""
        return self.status == "diverged"

    def stuck_fraction(self):
        """(fraction, standard error) of stuck draws per eta (binomial; Wilson-free plain estimate)."""
        f = self.stuck.mean(axis=1)
        n = self.stuck.shape[1]
        return f, np.sqrt(np.maximum(f * (1 - f), 1.0 / (4 * n)) / n)

    def distribution(self, what="stages", i=0) -> dict:
        """``value -> count`` of ``what`` ("stages", "plateaus", "shoulders" or "kinds") at eta index ``i``."""
        values = getattr(self, what)[i]
        keys, counts = np.unique(values, return_counts=True)
        return {k.item() if hasattr(k, "item") else k: int(c) for k, c in zip(keys, counts)}

    def time_ratios(self, i=0) -> np.ndarray:
        """(draws, p) measured ``learned_at`` over the predicted stage time, per draw and direction."""
        pred = np.array([[pr.times[k] if k < pr.times.size else np.nan for k in range(self.learned_at.shape[-1])]
                         for pr in self.predicted[i]])
        return self.learned_at[i] / pred

    def summary(self) -> str:
        f, se = self.stuck_fraction()
        lines = []
        for i, eta in enumerate(self.eta):
            st = self.stages[i]
            lines.append(f"eta = {eta:g} ({self.engine}, {self.draws.size} draws): stages {self.distribution('stages', i)}, "
                         f"mean {st.mean():.2f} +- {st.std(ddof=1) / math.sqrt(st.size) if st.size > 1 else 0:.2f}; "
                         f"plateaus {self.distribution('plateaus', i)}, shoulders {self.distribution('shoulders', i)}; "
                         f"stuck (eps_g > {self.threshold:g} at the end) {f[i]:.2f} +- {se[i]:.2f}"
                         f"{f' (diverged {int(self.diverged[i].sum())})' if self.diverged[i].any() else ''}; "
                         f"specialization {self.distribution('kinds', i)}")
            r = self.time_ratios(i)
            with np.errstate(invalid="ignore"):
                med = [np.nanmedian(r[:, k]) if np.isfinite(r[:, k]).any() else np.nan for k in range(r.shape[1])]
            lines.append("  learned_at / predicted time per direction, median over draws: "
                         + ", ".join(f"{m:.2f}" for m in med))
        return "\n".join(lines)


def ensemble(draws=50, eta=5.0, *, engine="ode", store="ensemble.h5", executor=None, workers=None, threshold=1e-4,
             progress=False, **fixed) -> Ensemble:
    """Run ``draws`` teacher/student draws of the mode setting through :func:`onlinemdl.scan` and analyse them.

    Draw ``d`` uses teacher seed ``d`` and student seed ``d + 1`` (draw 0 is the published pair).
    Every point is stored in ``store`` (rerunning skips finished points; a changed setting runs
    anew) and can run on any executor (``executor=``; default a process pool).

    Parameters
    ----------
    draws : number of draws, or a list of draw numbers.
    eta : a learning rate or a list of them.
    engine : "ode" (:func:`onlinemdl.recipes.run_ode`) or "sgd" (:func:`onlinemdl.recipes.run_simulation`).
    threshold : a run is stuck when ``eps_g`` at ``alpha_max`` is above this.
    fixed : further parameters of the run function (``N``, ``M``, ``alpha_max``, ``replicas``, ...);
        the defaults are the paper's setting with only ``Xi`` trained.
    """
    if engine not in ("ode", "sgd"):
        raise ValueError(f'engine must be "ode" or "sgd", got {engine!r}')
    draw_list = list(range(draws)) if isinstance(draws, (int, np.integer)) else [int(d) for d in draws]
    if not draw_list or min(draw_list) < 0:
        raise ValueError(f"draws must be a positive count or a list of draw numbers >= 0, got {draws!r}")
    etas = [float(e) for e in np.atleast_1d(eta)]
    fixed = {"train": ["xi"], **fixed}
    run = run_ode if engine == "ode" else run_simulation
    points = [{"eta": e, "teacher_seed": d, "student_seed": d + 1} for e in etas for d in draw_list]
    res = scan(points, run=run, store=store, fixed=fixed, executor=executor, workers=workers, progress=progress)
    shape = (len(etas), len(draw_list))
    out = {k: np.zeros(shape, int) for k in ("plateaus", "shoulders")}
    final = np.full(shape, np.nan)
    kinds, feats, preds, status = (np.empty(shape, object) for _ in range(4))
    net_keys = ("N", "M", "K", "p", "teacher", "student", "train", "sigma", "activation")
    p_max = 0
    learned = {}
    teachers = {}
    for k in range(len(points)):
        i, j = divmod(k, len(draw_list))
        traj = res.result(k)
        spec = traj.params["spec"]
        d = draw_list[j]
        if d not in teachers:
            t, s = networks(**{key: spec[key] for key in net_keys if key in spec}, teacher_seed=d, student_seed=d + 1)
            teachers[d] = (t, s)
        t, s = teachers[d]
        preds[i, j] = stage_theory(t, etas[i], student=s)
        status[i, j] = traj.status
        found = analysis.find_plateaus(traj)
        out["plateaus"][i, j], out["shoulders"][i, j] = len(found.plateaus), len(found.shoulders)
        feats[i, j] = found.features
        mean = traj.mean().eps_g if traj.eps_g.ndim == 2 else traj.eps_g
        final[i, j] = mean[-1] if traj.status == "ok" and mean.size else np.inf
        try:
            kinds[i, j] = analysis.specialization(traj).kind
        except (ValueError, IndexError):  # every replica diverged, or no output time at all
            kinds[i, j] = "none"
        try:
            la = analysis.mode_picture(traj).learned_at
        except (ValueError, IndexError):
            la = np.full(t.lam.size, np.nan)
        learned[i, j] = la
        p_max = max(p_max, la.size)
    learned_at = np.full(shape + (p_max,), np.nan)
    for (i, j), la in learned.items():
        learned_at[i, j, :la.size] = la
    return Ensemble(eta=np.array(etas), draws=np.array(draw_list), plateaus=out["plateaus"], shoulders=out["shoulders"],
                    final=final, stuck=~(final <= threshold), kinds=kinds, features=feats, predicted=preds,
                    learned_at=learned_at, status=status, threshold=float(threshold), store=str(store), engine=engine)


__all__ = ["StagePrediction", "gain_matrix", "stage_theory", "Ensemble", "ensemble"]
