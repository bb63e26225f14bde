"""The standard figures of the on-line dynamics (matplotlib; each function returns the Figure).

Figures are built with :class:`matplotlib.figure.Figure` directly, not through pyplot, so they
work headless and leave no global state; in a notebook the returned Figure displays itself.
Colours are the colour-blind-safe Okabe-Ito palette (cividis beyond eight lines) and the
diverging ColorBrewer ``PuOr`` map for signed overlaps.
"""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from . import analysis
from .trajectory import Trajectory

#: Okabe & Ito (2008) colour-blind-safe palette (black last; yellow late, it is pale on white).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000")
ALPHA_LABEL = r"$\alpha$ = steps / $N$ (SGD updates per input dimension)"
PLATEAU_COLOR = "0.88"
SHOULDER_COLOR = "#DCEBF7"


def palette(n: int) -> list:
    """``n`` colour-blind-safe colours: Okabe-Ito up to 8, cividis samples beyond."""
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    return [colormaps["cividis"](x) for x in np.linspace(0.0, 0.9, n)]


def _axes(ax, ncols=1, width=5.0, height=3.8):
    if ax is not None:
        return ax.figure, [ax]
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, ncols)))


def _positive(alpha, *arrays):
    """Drop alpha = 0 (and below) for a logarithmic alpha axis."""
    keep = alpha > 0
    return (alpha[keep],) + tuple(a[..., keep] for a in arrays)


def _shade(ax, features):
    """Plateaus in grey, shoulders in pale blue (each labelled once)."""
    seen = set()
    for p in features:
        kind = getattr(p, "kind", "plateau")
        ax.axvspan(p.start, p.end, color=PLATEAU_COLOR if kind == "plateau" else SHOULDER_COLOR, zorder=0, lw=0,
                   label=kind if kind not in seen else None)
        seen.add(kind)


def _plateaus(traj, plateaus):
    """The features to shade: True finds plateaus and shoulders; a PlateauSearch gives both; a list is taken as is."""
    if plateaus is True:
        return analysis.find_plateaus(traj).features
    if plateaus is False or plateaus is None:
        return []
    if isinstance(plateaus, analysis.PlateauSearch):
        return plateaus.features
    return list(plateaus)


def _default_label(traj):
    if traj.kind == "ode":
        return "ODE"
    n = traj.replicas
    return f"{traj.kind.upper() if traj.kind == 'sgd' else traj.kind} ({n} replica{'s' if n > 1 else ''})"


def plot_eps_g(trajectories, labels=None, plateaus=True, ax=None, bands=True) -> Figure:
    """Learning curves ``eps_g(alpha)``, log-log.

    ODE trajectories are drawn as lines, simulations as the replica mean with a band of one
    standard error of the mean (one replica: a thin line). An ODE with the finite-N theory
    (``integrate(..., fluctuations=True)``) also gets, with ``bands``, the predicted band of single
    runs: its bias-corrected mean +- 2 predicted standard deviations, up to ``fluct_valid_until``.

    Parameters
    ----------
    trajectories : a Trajectory or a sequence of them.
    labels : legend labels (default: "ODE", "SGD (n replicas)").
    plateaus : True shades the plateaus (grey) and shoulders (pale blue) of the first trajectory
        (:func:`~onlinemdl.analysis.find_plateaus`); a PlateauSearch or list of Plateau shades those; False none.
    ax : draw into this Axes instead of a new figure.
    """
    trajs = [trajectories] if isinstance(trajectories, Trajectory) else list(trajectories)
    if not trajs:
        raise ValueError("trajectories must hold at least one Trajectory")
    if labels is not None and len(labels) != len(trajs):
        raise ValueError(f"labels must have one entry per trajectory ({len(trajs)}), got {len(labels)}")
    fig, (ax,) = _axes(ax)
    _shade(ax, _plateaus(trajs[0], plateaus))
    for k, (t, color) in enumerate(zip(trajs, palette(len(trajs)))):
        label = labels[k] if labels is not None else _default_label(t)
        if t.eps_g.ndim == 2 and t.replicas > 1:
            mean, sem = t.mean().eps_g, t.sem().eps_g
            a, mean, sem = _positive(t.alpha, mean, sem)
            ax.fill_between(a, np.maximum(mean - sem, mean * 1e-3), mean + sem, color=color, alpha=0.3, lw=0)
            ax.plot(a, mean, "o", ms=3, color=color, label=f"{label}, mean $\\pm$ s.e.m.")
        else:
            a, eps = _positive(t.alpha, t.eps_g if t.eps_g.ndim == 1 else t.eps_g[0])
            ode = t.kind == "ode"
            ax.plot(a, eps, "-" if ode else "-.", lw=2 if ode else 1, color=color, label=label, zorder=3 if ode else 2)
            if ode and bands and t.eps_g_sd is not None:
                _predicted_band(ax, t, color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(ALPHA_LABEL)
    ax.set_ylabel(r"generalisation error $\epsilon_g$")
    ax.legend(frameon=False)
    return fig


def _predicted_band(ax, t: Trajectory, color):
    """The finite-N theory's band of single runs around an ODE: mean + bias +- 2 sd, where valid."""
    ok = (t.alpha < t.fluct_valid_until) & (t.alpha > 0)  # a logarithmic alpha axis
    a, mean, sd = t.alpha[ok], (t.eps_g + t.eps_g_bias)[ok], t.eps_g_sd[ok]
    N = t.params.get("N", "?")
    ax.fill_between(a, np.maximum(mean - 2 * sd, mean * 1e-3), mean + 2 * sd, color=color, alpha=0.15, lw=0,
                    label=f"predicted $\\pm 2$ sd of one run (N = {N})")


def plot_local_exponent(trajectories, labels=None, smooth=None, features=True, ax=None) -> Figure:
    """The learning curve and its local exponent ``s = -d ln eps_g / d ln alpha`` (two panels).

    Top: ``eps_g`` (:func:`plot_eps_g`), plateaus and shoulders of the first trajectory shaded.
    Bottom: ``s`` of each trajectory (:func:`~onlinemdl.analysis.local_exponent`: an ODE unsmoothed,
    a simulation's replica mean with a band of one jackknife standard error), with the plateau
    threshold ``flat`` and the flattest point of each feature marked.

    ``smooth`` is passed to :func:`~onlinemdl.analysis.local_exponent`; ``ax``: two Axes (top, bottom).
    """
    trajs = [trajectories] if isinstance(trajectories, Trajectory) else list(trajectories)
    if not trajs:
        raise ValueError("trajectories must hold at least one Trajectory")
    if labels is not None and len(labels) != len(trajs):
        raise ValueError(f"labels must have one entry per trajectory ({len(trajs)}), got {len(labels)}")
    if ax is None:
        fig = Figure(figsize=(6.5, 6.0), layout="constrained")
        ax0, ax1 = fig.subplots(2, 1, sharex=True, height_ratios=[1.2, 1])
    else:
        ax0, ax1 = ax
        fig = ax0.figure
    found = analysis.find_plateaus(trajs[0], smooth=smooth) if features is True else features
    feats = _plateaus(trajs[0], found if found is not None else False)
    plot_eps_g(trajs, labels=labels, plateaus=feats, ax=ax0)
    ax0.set_xlabel("")
    _shade(ax1, feats)
    for k, (t, color) in enumerate(zip(trajs, palette(len(trajs)))):
        le = analysis.local_exponent(t, smooth=smooth)
        label = labels[k] if labels is not None else _default_label(t)
        if le.sem is not None:
            ax1.fill_between(le.alpha, le.exponent - le.sem, le.exponent + le.sem, color=color, alpha=0.3, lw=0)
            label = f"{label}, smoothed {le.smooth:g} dec., $\\pm$ s.e."
        ax1.plot(le.alpha, le.exponent, color=color, lw=1.5, label=label)
    for p in feats:
        ax1.plot([p.center], [p.slope], "v" if p.kind == "plateau" else "o", color="0.2", ms=5)
    ax1.axhline(analysis.FLAT, color="0.5", ls="--", lw=1, label=f"plateau threshold {analysis.FLAT:g}")
    ax1.axhline(0.0, color="0.7", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_xlabel(ALPHA_LABEL)
    ax1.set_ylabel(r"local exponent $-d\ln\epsilon_g / d\ln\alpha$")
    top = max([np.nanpercentile(analysis.local_exponent(t, smooth=smooth).exponent, 90) for t in trajs] + [1.0])
    ax1.set_ylim(-0.3, min(4.0, 1.3 * top))
    ax1.legend(frameon=False, fontsize="small")
    return fig


def plot_overlaps(traj: Trajectory, alphas, replica=None, match=True) -> Figure:
    """Heat maps of the normalised overlaps ``R_in / sqrt(Q_ii T_nn)`` at chosen alphas.

    ``match=True`` orders the teacher columns by the optimal final matching, so that a
    specialized student shows a diagonal. ``replica``: one replica of a simulation (an integer), or
    None for the replica mean (nodes aligned across replicas), as everywhere in analysis and plotting.
    """
    alphas = np.atleast_1d(np.asarray(alphas, float))
    if alphas.size == 0:
        raise ValueError("alphas must hold at least one value")
    spec = analysis.specialization(traj, replica=replica)
    r = spec.overlaps
    K, M = r.shape[1:]
    cols = np.arange(M)
    if match:
        matched = [m for m in spec.matching if m >= 0]
        cols = np.array(matched + [n for n in range(M) if n not in matched])
    fig, axes = _axes(None, ncols=alphas.size, width=2.6 + 0.25 * M, height=2.8 + 0.25 * K)
    for ax, a in zip(axes, alphas):
        i = traj.at(a)
        im = ax.imshow(r[i][:, cols], cmap="PuOr", vmin=-1, vmax=1)
        ax.set_title(rf"$\alpha$ = {traj.alpha[i]:.3g}")
        ax.set_xticks(range(M), [str(c) for c in cols])
        ax.set_yticks(range(K))
        ax.set_xlabel("teacher node $n$")
        if K * M <= 64:
            for (s, n), val in np.ndenumerate(r[i][:, cols]):
                ax.text(n, s, f"{val:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(val) > 0.6 else "black")
    axes[0].set_ylabel("student node $i$")
    fig.colorbar(im, ax=axes, shrink=0.85, label=r"$R_{in} / \sqrt{Q_{ii} T_{nn}}$")
    return fig


def plot_specialization(traj: Trajectory, replica=None, threshold=0.5) -> Figure:
    """Specialization index and the specialization measure of each student node against alpha.

    Left: index (largest minus second-largest normalised overlap), with the threshold and each
    node's ``alpha_specialized``; right: progress towards the matched teacher node with the part
    shared by all teacher nodes removed (:func:`~onlinemdl.analysis.specialization`; sudden rise:
    classic specialization; spread over decades: continuous), each node's onset and end marked,
    the kind in the title. ``replica``: one replica of a simulation, or None for the aligned
    replica mean (with a band of one standard error).
    """
    spec = analysis.specialization(traj, threshold=threshold, replica=replica)
    fig, (ax0, ax1) = _axes(None, ncols=2)
    a, index, progress = _positive(spec.alpha, spec.index.T, spec.progress.T)
    colors = palette(index.shape[0])
    for i, color in enumerate(colors):
        m = spec.matching[i]
        label = f"node {i}" + (f" → teacher {m}" if m >= 0 else "")
        ax0.plot(a, index[i], color=color, lw=1.5, label=label)
        ax1.plot(a, progress[i], color=color, lw=1.5, label=label)
        if spec.sem is not None:
            _, sem = _positive(spec.alpha, spec.sem.T)
            ax1.fill_between(a, progress[i] - sem[i], progress[i] + sem[i], color=color, alpha=0.25, lw=0)
        if np.isfinite(spec.alpha_specialized[i]):
            ax0.axvline(spec.alpha_specialized[i], color=color, ls=":", lw=1)
        for when, level in ((spec.onset[i], spec.criterion["levels"][0]), (spec.end[i], spec.criterion["levels"][1])):
            if np.isfinite(when):
                ax1.plot([when], [level], "|", color=color, ms=10, mew=2)
    ax0.axhline(threshold, color="0.5", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax0.set_ylabel("specialization index\n(largest − second-largest overlap)")
    ax1.set_ylabel("specialization: progress to matched teacher node\n(symmetric part removed)")
    ax1.set_title(f"{spec.kind} (widths {', '.join('-' if not np.isfinite(w) else f'{w:.2f}' for w in spec.width)} "
                  "decades)", fontsize="small")
    for ax in (ax0, ax1):
        ax.set_xscale("log")
        ax.set_xlabel(ALPHA_LABEL)
    ax0.legend(frameon=False, fontsize="small")
    return fig


def plot_modes(traj: Trajectory, teacher=None, P=None, plateaus=True, replica=None) -> Figure:
    """Mode strengths and the mode-resolved learning against alpha (mode students, K = M).

    Left: ``|lam_mu|`` of each mode (the strengths of ``P = A L^2 A^T`` when the trajectory has
    no ``lam``); right: the student-teacher overlap along each eigenvector of ``P``
    (:func:`~onlinemdl.analysis.mode_picture`), with the plateaus shaded.
    """
    pic = analysis.mode_picture(traj, teacher=teacher, P=P, replica=replica)
    fig, (ax0, ax1) = _axes(None, ncols=2)
    if pic.lam is not None:
        a, lam = _positive(pic.alpha, np.abs(pic.lam).T)
        ylabel = r"mode strength $|\lambda_\mu|$"
        names = [rf"$\mu$ = {mu}" for mu in range(lam.shape[0])]
    else:
        a, lam = _positive(pic.alpha, pic.strength.T)
        ylabel = r"eigenvalue of $P = A \Lambda^2 A^T$"
        names = [f"direction {k}" for k in range(lam.shape[0])]
    for y, name, color in zip(lam, names, palette(lam.shape[0])):
        ax0.plot(a, y, color=color, lw=1.5, label=name)
    ax0.set_ylabel(ylabel)
    _shade(ax1, _plateaus(traj, plateaus))
    a, overlap = _positive(pic.alpha, pic.overlap.T)
    for k, (y, color) in enumerate(zip(overlap, palette(overlap.shape[0]))):
        ax1.plot(a, y, color=color, lw=1.5, label=rf"$u_{k}$, $P$-eigenvalue {pic.strength[-1, k]:.3g}")
    ax1.axhline(pic.learned, color="0.5", ls="--", lw=1)
    ax1.set_ylabel(r"overlap along $u_k$: $u^T R u / \sqrt{u^T Q u \; u^T T u}$")
    for ax in (ax0, ax1):
        ax.set_xscale("log")
        ax.set_xlabel(ALPHA_LABEL)
        ax.legend(frameon=False, fontsize="small")
    return fig


__all__ = ["OKABE_ITO", "palette", "plot_eps_g", "plot_local_exponent", "plot_overlaps", "plot_specialization",
           "plot_modes"]
