"""Analyses of trained mode networks, each a function returning arrays plus a plotting function
returning a matplotlib Figure.

- :func:`accuracy_vs_modes`, :func:`least_modes` (+ :func:`.fits.fit_log`): how many modes a width needs;
- :func:`mode_importance` (+ :func:`.fits.piecewise_power_law`): tau_a against rank;
- :func:`ablation`: removing leading, random or trailing modes, keeping the leading ones;
- :func:`compactness`, :func:`disentanglement`: hidden representations;
- :func:`cost`: trainable parameters and time per epoch against the dense baseline;
- :func:`xor_mode_maps`: what each mode of the toy 2-3-1 network does to the input plane.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import subspace_angles

from .fits import ResultMixin, fit_log, piecewise_power_law
from .train import train_model


@dataclass
class ModesScan(ResultMixin):
    """Test accuracy against width and modes: N (nN,), p (np,), acc (nN, np, seeds), dense (nN, seeds)."""

    N: np.ndarray
    p: np.ndarray
    acc: np.ndarray
    dense: np.ndarray


@dataclass
class Importance(ResultMixin):
    """Mode importance of one layer: tau (p,) decreasing, order (p,) the mode indices in that order, gamma."""

    tau: np.ndarray
    order: np.ndarray
    gamma: float


@dataclass
class Ablation(ResultMixin):
    """Accuracy after removing modes, over ks: leading, trailing, random (mean), random_std, keep
    (only the k leading kept); full is the unpruned accuracy."""

    ks: np.ndarray
    full: float
    leading: np.ndarray
    trailing: np.ndarray
    random: np.ndarray
    random_std: np.ndarray
    keep: np.ndarray


@dataclass
class Compactness(ResultMixin):
    """Per layer (0 = input): layer, width, participation ratio pr, n_pc PCs for the variance fraction."""

    layer: np.ndarray
    width: np.ndarray
    pr: np.ndarray
    n_pc: np.ndarray


@dataclass
class Disentanglement(ResultMixin):
    """Per layer (0 = input): mean class-subspace sin^2 D and the pairwise values (L, C, C)."""

    layer: np.ndarray
    D: np.ndarray
    pairwise: np.ndarray


@dataclass
class Cost(ResultMixin):
    """Trainable parameters and median seconds per epoch per kind (dense first), and their ratios to dense."""

    kinds: list
    params: np.ndarray
    seconds: np.ndarray
    params_ratio: np.ndarray
    seconds_ratio: np.ndarray


@dataclass
class ModeMaps(ResultMixin):
    """Output over the plane: x (n,), full (n, n), modes (p, n, n), directions (p, 2) or None."""

    x: np.ndarray
    full: np.ndarray
    modes: np.ndarray
    directions: np.ndarray | None = field(default=None)


def _figure(nrows=1, ncols=1, size=(5.0, 3.6)):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


# --- accuracy against the number of modes ------------------------------------------------
def accuracy_vs_modes(data, widths, ps, depth=1, kind="modes", seeds=(0,), progress=False, **train_kw):
    """Test accuracy of networks with ``depth`` hidden layers of width N, for every N in ``widths``
    and every p in ``ps``, and of the dense network of the same widths.

    Returns a :class:`ModesScan`: N (nN,), p (np,), acc (nN, np, seeds), dense (nN, seeds).
    ``train_kw`` goes to :func:`.train.train_model` (epochs, lr, ...).
    """
    widths, ps, seeds = list(widths), list(ps), list(seeds)
    acc = np.zeros((len(widths), len(ps), len(seeds)))
    dense = np.zeros((len(widths), len(seeds)))
    jobs = [(i, j, s) for i in range(len(widths)) for j in range(-1, len(ps)) for s in range(len(seeds))]
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="networks")
    for i, j, s in jobs:
        hidden = [widths[i]] * depth
        if j < 0:
            net, h = train_model(data, hidden, kind="dense", seed=seeds[s], **train_kw)
            dense[i, s] = h.test_acc[-1]
        else:
            net, h = train_model(data, hidden, kind=kind, p=ps[j], seed=seeds[s], **train_kw)
            acc[i, j, s] = h.test_acc[-1]
    return ModesScan(np.array(widths), np.array(ps), acc, dense)


def least_modes(result, target=0.95):
    """Least p whose seed-mean accuracy reaches ``target`` x the dense network's, per N (NaN if none)."""
    if not (0.0 < target <= 1.0):
        raise ValueError(f"target must be in (0, 1], got {target!r}")
    mean = result["acc"].mean(axis=2)
    goal = target * result["dense"].mean(axis=1)
    out = np.full(len(result["N"]), np.nan)
    for i in range(len(out)):
        hit = np.flatnonzero(mean[i] >= goal[i])
        if hit.size:
            out[i] = result["p"][hit[0]]
    return out


def plot_accuracy_vs_modes(result, target=0.95):
    """Left: accuracy against p per N (dense accuracy dashed). Right: p_min against N with its log fit."""
    fig, ax = _figure(1, 2)
    colors = [f"C{i}" for i in range(len(result["N"]))]
    for i, N in enumerate(result["N"]):
        a = result["acc"][i]
        ax[0, 0].errorbar(result["p"], a.mean(axis=1), yerr=a.std(axis=1), color=colors[i], marker="o", label=f"N={N}")
        ax[0, 0].axhline(result["dense"][i].mean(), color=colors[i], ls="--", lw=0.8)
    ax[0, 0].set(xlabel="modes p", ylabel="test accuracy", xscale="log")
    ax[0, 0].set_xticks(result["p"], [str(p) for p in result["p"]], minor=False)
    ax[0, 0].set_xticks([], minor=True)
    ax[0, 0].legend()
    p_min = least_modes(result, target)
    fit = fit_log(result["N"], p_min)
    ax[0, 1].plot(result["N"], p_min, "o", label=f"p_min ({target:.0%} of dense)")
    if np.isfinite(fit["b"]):
        NN = np.geomspace(result["N"].min(), result["N"].max(), 50)
        ax[0, 1].plot(NN, fit["a"] + fit["b"] * np.log(NN), "-",
                      label=f"{fit['a']:.2f} + {fit['b']:.2f} ln N  (R²={fit['r2']:.3f})")
    ax[0, 1].set(xlabel="width N", ylabel="p_min", xscale="log")
    ax[0, 1].set_xticks(result["N"], [str(n) for n in result["N"]], minor=False)
    ax[0, 1].set_xticks([], minor=True)
    ax[0, 1].legend()
    return fig


# --- mode importance -----------------------------------------------------------------------
def _mode_factors(net, layer):
    lay = net.layers[layer]
    if not hasattr(lay, "lam"):
        raise ValueError(f"layer must index a mode layer, one of {net.mode_layers()}, got {layer}")
    return lay


def mode_importance(net, layer, gamma=None):
    """Importance ``tau_a = |lam_a| + gamma (||xi_out,a|| + ||xi_in,a||)`` of the modes of ``layer``.

    ``gamma`` defaults to mean|lam| / mean(||xi_out,a|| + ||xi_in,a||), balancing the two terms.
    Returns an :class:`Importance`: tau (p,) in decreasing order, order (p,) the mode indices in that order, gamma.
    """
    lay = _mode_factors(net, layer)
    lam = np.abs(lay.lam.astype(float))
    norms = np.linalg.norm(lay.xi_out, axis=0) + np.linalg.norm(lay.xi_in, axis=0)
    if gamma is None:
        gamma = lam.mean() / norms.mean()
    tau = lam + gamma * norms  # tau_a = |lam_a| + gamma (||xi_out,a|| + ||xi_in,a||)
    order = np.argsort(-tau, kind="stable")
    return Importance(tau[order], order, float(gamma))


def importance_fits(net, max_breaks=2, n_boot=100, seed=0):
    """:func:`mode_importance` and its :func:`.fits.piecewise_power_law` for every mode layer
    (the fit is None for a layer with too few modes). Returns a dict layer -> (importance, fit)."""
    out = {}
    for l in net.mode_layers():
        imp = mode_importance(net, l)
        tau = imp["tau"]
        fit = piecewise_power_law(tau, max_breaks, n_boot, seed=seed) if len(tau) >= 3 and tau[-1] > 0 else None
        out[l] = (imp, fit)
    return out


def plot_mode_importance(fits, reference=None, reference_label="untrained"):
    """tau against rank per layer (log-log) with the fitted piecewise power law; ``reference``
    (a dict layer -> :class:`Importance`, e.g. the same network at initialisation) is drawn in grey
    open markers on the same axes."""
    fig, ax = _figure()
    a = ax[0, 0]
    for l, (imp, fit) in fits.items():
        r = np.arange(1, len(imp["tau"]) + 1)
        a.plot(r, imp["tau"], "o", ms=3, color=f"C{l}", label=f"layer {l + 1}")
        if fit is not None:
            slopes = ", ".join(f"{s:.2f}±{e:.2f}" for s, e in zip(fit.slopes, fit.slopes_err))
            a.plot(r, fit(r), "-", color=f"C{l}", label=f"slopes {slopes}")
            for b in fit.breaks:
                a.axvline(b, color=f"C{l}", ls=":", lw=0.8)
        if reference is not None and l in reference:
            a.plot(r, reference[l]["tau"], "o", ms=4, mfc="none", color=f"C{l}", alpha=0.5,
                   label=f"layer {l + 1}, {reference_label}")
    a.set(xscale="log", yscale="log", xlabel="rank", ylabel="importance tau")
    a.legend(fontsize="x-small", ncol=2 if reference else 1)
    return fig


# --- ablation ------------------------------------------------------------------------------
def ablation(net, X, y, layer, ks=None, n_random=10, seed=0):
    """Accuracy of ``net`` after zeroing modes of ``layer`` (no retraining).

    For each k in ``ks`` (default 0 .. p): removing the k leading modes (largest tau), k random
    modes (mean and standard deviation over ``n_random`` draws), the k trailing modes, and keeping
    only the k leading modes. Returns an :class:`Ablation` (arrays over ks, ``full`` the unpruned accuracy).
    """
    lay = _mode_factors(net, layer)
    p = lay.lam.shape[0]
    ks = np.arange(p + 1) if ks is None else np.asarray(ks, int)
    if np.any(ks < 0) or np.any(ks > p):
        raise ValueError(f"ks must lie in [0, {p}], got {ks.tolist()}")
    order = mode_importance(net, layer)["order"]
    work = net.copy()
    lam = work.layers[layer].lam
    orig = lam.copy()
    rng = np.random.default_rng(seed)

    def acc_without(removed):
        lam[...] = orig
        lam[removed] = 0  # lam_a = 0 removes mode a
        return work.accuracy(X, y)

    out = {k: np.zeros(len(ks)) for k in ("leading", "trailing", "random", "random_std", "keep")}
    for i, k in enumerate(ks):
        out["leading"][i] = acc_without(order[:k])
        out["trailing"][i] = acc_without(order[p - k:])
        out["keep"][i] = acc_without(order[k:])
        r = [acc_without(rng.choice(p, size=k, replace=False)) for _ in range(n_random)]
        out["random"][i], out["random_std"][i] = np.mean(r), np.std(r)
    return Ablation(ks=ks, full=net.accuracy(X, y), **out)


def plot_ablation(results):
    """Per layer: accuracy against k for removing leading / random / trailing modes, and keeping the k leading."""
    fig, ax = _figure(1, len(results))
    for a, (l, r) in zip(ax[0], results.items()):
        a.plot(r["ks"], r["leading"], "o-", label="remove k leading")
        a.errorbar(r["ks"], r["random"], yerr=r["random_std"], marker="s", label="remove k random")
        a.plot(r["ks"], r["trailing"], "^-", label="remove k trailing")
        a.plot(r["ks"], r["keep"], "d--", label="keep k leading")
        a.axhline(r["full"], color="k", lw=0.8)
        a.set(xlabel="k", ylabel="test accuracy", title=f"layer {l + 1}")
    ax[0, 0].legend(fontsize="small")
    return fig


# --- hidden representations ---------------------------------------------------------------
def _spectrum(H):
    Hc = H - H.mean(axis=0)
    return np.clip(np.linalg.eigvalsh(Hc.T @ Hc / max(len(H) - 1, 1))[::-1], 0, None)


def participation_ratio(H):
    """PR = (sum_k l_k)^2 / sum_k l_k^2 over the eigenvalues l_k of the covariance of H (rows are samples)."""
    lam = _spectrum(np.asarray(H, float))
    return float(lam.sum() ** 2 / np.sum(lam**2)) if lam.sum() > 0 else 0.0


def n_components(H, fraction=0.9):
    """Least number of principal components explaining ``fraction`` of the variance of H."""
    lam = _spectrum(np.asarray(H, float))
    if lam.sum() == 0:
        return 0
    return int(np.searchsorted(np.cumsum(lam) / lam.sum(), fraction - 1e-12) + 1)


def compactness(net, X, fraction=0.9):
    """Participation ratio and PCs for ``fraction`` of the variance of the input (layer 0) and of every
    hidden layer. Returns a :class:`Compactness`: layer (L,), width (L,), pr (L,), n_pc (L,)."""
    Hs = [np.asarray(X, float)] + [h.astype(float) for h in net.hidden(X)]
    return Compactness(np.arange(len(Hs)), np.array([H.shape[1] for H in Hs]),
                       np.array([participation_ratio(H) for H in Hs]), np.array([n_components(H, fraction) for H in Hs]))


def disentanglement(net, X, y, k=3):
    """Mean sin^2 of the principal angles between the top-``k`` PC subspaces of every pair of
    class-conditional representations, per layer (0 = input): 1 for orthogonal class subspaces, 0
    for identical ones. Returns a :class:`Disentanglement`: layer (L,), D (L,), pairwise (L, C, C)."""
    y = np.asarray(y)
    classes = np.unique(y)
    Hs = [np.asarray(X, float)] + [h.astype(float) for h in net.hidden(X)]
    D = np.zeros(len(Hs))
    pair = np.zeros((len(Hs), len(classes), len(classes)))
    for l, H in enumerate(Hs):
        bases = []
        for c in classes:
            Hc = H[y == c] - H[y == c].mean(axis=0)
            _, _, Vt = np.linalg.svd(Hc, full_matrices=False)
            bases.append(Vt[:min(k, len(Vt))].T)
        for i in range(len(classes)):
            for j in range(i + 1, len(classes)):
                s2 = np.mean(np.sin(subspace_angles(bases[i], bases[j])) ** 2)
                pair[l, i, j] = pair[l, j, i] = s2
        D[l] = pair[l][np.triu_indices(len(classes), 1)].mean()
    return Disentanglement(np.arange(len(Hs)), D, pair)


def plot_representations(compact, disent=None):
    """Participation ratio, PCs for 90% variance and (optionally) disentanglement against layer,
    one line per network (``compact`` and ``disent`` are dicts name -> result)."""
    n = 3 if disent else 2
    fig, ax = _figure(1, n, size=(4.0, 3.4))
    for name, r in compact.items():
        ax[0, 0].plot(r["layer"], r["pr"], "o-", label=name)
        ax[0, 1].plot(r["layer"], r["n_pc"], "o-", label=name)
        if disent:
            ax[0, 2].plot(disent[name]["layer"], disent[name]["D"], "o-", label=name)
    for a in ax[0]:
        a.set_xticks(next(iter(compact.values()))["layer"])
    ax[0, 0].set(xlabel="layer (0 = input)", ylabel="participation ratio")
    ax[0, 1].set(xlabel="layer (0 = input)", ylabel="PCs for 90% variance")
    if disent:
        ax[0, 2].set(xlabel="layer (0 = input)", ylabel="class-subspace mean sin² angle")
    ax[0, 0].legend()
    return fig


# --- cost ------------------------------------------------------------------------------------
def cost(data, hidden, kinds=("modes", "modes-untied", "lowrank", "svd"), p=None, epochs=3, seed=0, **train_kw):
    """Trainable parameters and median wall time per epoch of each kind, and of "dense".

    Returns a :class:`Cost`: kinds (list, dense first), params, seconds, and both as ratios to dense.
    """
    kinds = ["dense"] + [k for k in kinds if k != "dense"]
    params, seconds = [], []
    for kind in kinds:
        net, h = train_model(data, hidden, kind=kind, p=p, epochs=epochs, seed=seed, **train_kw)
        params.append(net.n_params())
        seconds.append(np.median(h.seconds))
    params, seconds = np.array(params), np.array(seconds)
    return Cost(kinds, params, seconds, params / params[0], seconds / seconds[0])


def plot_cost(result):
    """Bars of trainable parameters and time per epoch, relative to the dense baseline."""
    fig, ax = _figure(1, 2, size=(4.5, 3.4))
    x = np.arange(len(result["kinds"]))
    for a, key, label in ((ax[0, 0], "params_ratio", "parameters / dense"), (ax[0, 1], "seconds_ratio", "time per epoch / dense")):
        a.bar(x, result[key])
        a.set_xticks(x, result["kinds"], rotation=30)
        a.set(ylabel=label)
    return fig


# --- the toy task ---------------------------------------------------------------------------
def xor_mode_maps(net, layer=0, lim=1.2, n=81):
    """Network output over the input square [-lim, lim]^2 with all modes of ``layer`` and with
    each single mode kept alone. Returns :class:`ModeMaps`: x (n,), full (n, n), modes (p, n, n), and
    the input-side directions lam_a xi_in,a (p, 2) when ``layer`` is the first (None otherwise)."""
    lay = _mode_factors(net, layer)
    g = np.linspace(-lim, lim, n)
    XX = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    work = net.copy()
    lam = work.layers[layer].lam
    orig = lam.copy()
    out = work.forward(XX)[:, 0].reshape(n, n)
    modes = np.zeros((len(orig), n, n))
    for a in range(len(orig)):
        lam[...] = 0
        lam[a] = orig[a]  # only mode a
        modes[a] = work.forward(XX)[:, 0].reshape(n, n)
    return ModeMaps(g, out, modes, (lay.xi_in * lay.lam).T.astype(float) if layer == 0 else None)


def plot_xor_modes(maps, X=None, y=None):
    """Output of the full network and of each single mode over the input plane, data overlaid."""
    p = len(maps["modes"])
    fig, ax = _figure(1, p + 1, size=(3.2, 3.0))
    g = maps["x"]
    panels = [("all modes", maps["full"])] + [(f"mode {a + 1} alone", maps["modes"][a]) for a in range(p)]
    for i, (a, (title, Z)) in enumerate(zip(ax[0], panels)):
        m = np.abs(Z).max() or 1.0
        a.contourf(g, g, Z, levels=np.linspace(-m, m, 21), cmap="RdBu_r")
        if Z.min() < 0 < Z.max():
            a.contour(g, g, Z, levels=[0.0], colors="k", linewidths=0.8)
        if X is not None:
            for label, color in ((1, "k"), (-1, "0.6")):
                sel = np.ravel(y) == label
                a.scatter(X[sel, 0], X[sel, 1], color=color, s=3, edgecolors="none", label=f"y = {label:+d}")
        if i > 0 and maps["directions"] is not None:
            d = maps["directions"][i - 1]
            d = 0.8 * g[-1] * d / (np.linalg.norm(d) or 1.0)
            a.annotate("", xy=d, xytext=(0, 0), arrowprops={"arrowstyle": "->", "lw": 1.5})
        a.set(title=title, xlabel="x1", aspect="equal")
    ax[0, 0].set_ylabel("x2")
    return fig


def plot_history(history):
    """Training loss and train/test accuracy against epoch."""
    fig, ax = _figure(1, 2, size=(4.2, 3.2))
    e = np.arange(1, len(history.loss) + 1)
    ax[0, 0].plot(e, history.loss)
    ax[0, 0].set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax[0, 1].plot(e, history.train_acc, label="train")
    ax[0, 1].plot(e, history.test_acc, label="test")
    ax[0, 1].set(xlabel="epoch", ylabel="accuracy")
    ax[0, 1].legend()
    return fig
