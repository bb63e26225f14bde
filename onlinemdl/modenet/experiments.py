"""Run functions for scans of the deep mode network on MNIST (notebook 06).

Each is a module-level function of plain parameters returning a dict of numbers, strings and
arrays, so that :func:`onlinemdl.scan.scan` can send it to worker processes by name and store
its results (resumable; any executor). The MNIST split is fixed: a seeded permutation of the
60000 training images puts ``n_val`` of them aside as held-out validation data (the
convergence criterion), the first ``n_train`` of the rest are trained on, and the 10000 test
images (or the first ``n_test``) are used only for reporting.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from .analysis import compactness, disentanglement, mode_importance
from .mnist_data import mnist
from .network import Network
from .train import fit

#: seed of the permutation that splits MNIST's training images into train and validation parts
SPLIT_SEED = 20220819
_DATA, _RAW = {}, {}
_LOCK = threading.Lock()  # a thread pool shares one copy


def mnist_split(n_train=55000, n_val=5000, n_test=10000, dtype="float32", mnist_path=None):
    """``(X_train, y_train, X_val, y_val, X_test, y_test)`` of the fixed split (cached per process)."""
    key = (n_train, n_val, n_test, dtype, mnist_path)
    with _LOCK:
        return _DATA[key] if key in _DATA else _split(key)


def _split(key):
    n_train, n_val, n_test, dtype, mnist_path = key
    if n_train < 1 or n_val < 1 or n_train + n_val > 60000:
        raise ValueError(f"n_train and n_val must be >= 1 with n_train + n_val <= 60000, got {n_train} and {n_val}")
    if not (1 <= n_test <= 10000):
        raise ValueError(f"n_test must be in [1, 10000], got {n_test}")
    if (dtype, mnist_path) not in _RAW:
        _RAW.clear()
        _RAW[dtype, mnist_path] = mnist(mnist_path, dtype=dtype)
    d = _RAW[dtype, mnist_path]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(d.X_train))
    val, train = order[-n_val:], order[:n_train]
    _DATA.clear()  # one split per process at a time
    _DATA[key] = (d.X_train[train], d.y_train[train], d.X_train[val], d.y_train[val],
                  d.X_test[:n_test], d.y_test[:n_test])
    return _DATA[key]


def _importance(net):
    """(L, p) importance tau, decreasing, of every mode layer (empty for layers without modes;
    NaN-padded where a layer has fewer modes, as SVD layers clipped to their width)."""
    taus = [mode_importance(net, l).tau for l in net.mode_layers()]
    out = np.full((len(taus), max((len(t) for t in taus), default=0)), np.nan)
    for i, t in enumerate(taus):
        out[i, :len(t)] = t
    return out


def ablation_curves(net, X, y, fractions, n_random=5, seed=0):
    """Accuracy after removing a fraction of the modes of one mode layer at a time (the others
    intact, no retraining): least important first, most important first, and random modes.

    Returns arrays (L, F): ``least``, ``most``, ``random`` (mean over ``n_random`` draws) and
    ``random_sd``, for the mode layers in order and the ``fractions`` F.
    """
    layers = net.mode_layers()
    out = {k: np.zeros((len(layers), len(fractions))) for k in ("least", "most", "random", "random_sd")}
    rng = np.random.default_rng(seed)
    work = net.copy()
    for i, l in enumerate(layers):
        lam = work.layers[l].lam
        orig = lam.copy()
        p = len(orig)
        order = mode_importance(net, l).order  # most important first

        def acc_without(removed):
            lam[...] = orig
            lam[removed] = 0  # lam_a = 0 removes mode a
            return work.accuracy(X, y)

        for j, f in enumerate(fractions):
            k = int(round(f * p))
            out["least"][i, j] = acc_without(order[p - k:])
            out["most"][i, j] = acc_without(order[:k])
            r = [acc_without(rng.choice(p, size=k, replace=False)) for _ in range(n_random)]
            out["random"][i, j], out["random_sd"][i, j] = np.mean(r), np.std(r)
        lam[...] = orig
    return out


def class_separation(H, y):
    """Fisher ratio tr(S_between) / tr(S_within) of the representation H (rows are samples) with
    class labels y: how far apart the class means are against the spread inside the classes."""
    H = np.asarray(H, float)
    mu = H.mean(axis=0)
    between = within = 0.0
    for c in np.unique(y):
        Hc = H[y == c]
        mc = Hc.mean(axis=0)
        between += len(Hc) * float(np.sum((mc - mu) ** 2))
        within += float(np.sum((Hc - mc) ** 2))
    return between / within if within > 0 else np.inf


def run_mnist(kind="modes", p=30, hidden=(100, 100), seed=0, epochs=30, patience=4, lr=0.01, batch=100,
              step_size=10, gamma=0.5, n_train=55000, n_val=5000, n_test=10000, shuffled=False, ablate=False,
              fractions=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), n_random=5, representations=True,
              dtype="float32", mnist_path=None):
    """Train one network of widths 784-hidden-10 on MNIST (Adam, the learning rate cut by ``gamma``
    every ``step_size`` epochs) with early stopping on the validation part, and measure it.

    Parameters
    ----------
    kind, p : the network (:data:`.network.KINDS`; p ignored for "dense").
    shuffled : train on randomly permuted training labels (a reference that learns no structure;
        early stopping is then off and all ``epochs`` run).
    ablate : also compute :func:`ablation_curves` over ``fractions`` on the test set.
    representations : also measure the hidden representations of the test set (participation
        ratio, PCs for 90% of the variance, class-subspace sin^2, Fisher class separation).

    Returns
    -------
    dict: test_acc, val_acc (at the epoch kept), n_params, epochs (run), best_epoch, status,
    seconds (wall time of the training updates), seconds_total (with the validation passes),
    seconds_per_epoch, learning curves ``curve_val`` (validation accuracy) and ``curve_loss``;
    ``tau0`` and ``tau`` (L x p importance before and after training) for mode layers;
    ``abl_*`` arrays when ``ablate``; ``pr``, ``n_pc``, ``D``, ``fisher`` (one per layer,
    0 = input) when ``representations``.
    """
    X, y, Xv, yv, Xt, yt = mnist_split(n_train, n_val, n_test, dtype, mnist_path)
    if shuffled:
        y = np.random.default_rng(10_000 + seed).permutation(y)
    widths = [X.shape[1], *hidden, 10]
    net = Network.build(widths, kind=kind, p=None if kind == "dense" else p, dtype=dtype, seed=seed)
    tau0 = _importance(net)
    t0 = time.perf_counter()
    h = fit(net, X, y, epochs=epochs, batch_size=batch, lr=lr, schedule="step", step_size=step_size, gamma=gamma,
            seed=seed, validation=(Xv, yv), patience=None if shuffled else patience, track_train=shuffled)
    total = time.perf_counter() - t0
    test_acc = net.accuracy(Xt, yt) if h.best_epoch >= 0 else -1.0  # the parameters kept (best validation epoch)
    out = {"kind": kind, "p": 0 if kind == "dense" else int(p), "seed": int(seed), "n_params": net.n_params(),
           "status": h.status, "message": h.message, "epochs": h.epochs, "best_epoch": h.best_epoch,
           "test_acc": test_acc, "val_acc": float(h.val_acc[h.best_epoch]) if h.best_epoch >= 0 else -1.0,
           "seconds": float(np.sum(h.seconds)), "seconds_total": total,
           "seconds_per_epoch": float(np.median(h.seconds)) if h.epochs else -1.0,
           "curve_val": h.val_acc, "curve_loss": h.loss}
    if shuffled:
        out["train_acc"] = float(h.train_acc[h.best_epoch]) if h.best_epoch >= 0 else -1.0
    if net.mode_layers():
        out["tau0"], out["tau"] = tau0, _importance(net)
    if ablate and net.mode_layers():
        ab = ablation_curves(net, Xt, yt, fractions, n_random=n_random, seed=seed)
        out.update({f"abl_{k}": v for k, v in ab.items()}, abl_fractions=np.asarray(fractions, float))
    if representations:
        comp = compactness(net, Xt)
        dis = disentanglement(net, Xt, yt)
        Hs = [Xt] + net.hidden(Xt)
        out.update(pr=comp.pr, n_pc=comp.n_pc, D=dis.D,
                   fisher=np.array([class_separation(H, yt) for H in Hs]))
    return out


def run_width(width, p=0, seed=0, kind="modes", depth=1, epochs=10, patience=2, lr=0.01, batch=100, step_size=4,
              gamma=0.5, n_train=10000, n_val=5000, n_test=10000, dtype="float32", mnist_path=None):
    """Test accuracy of a network 784-[width]*depth-10 with ``p`` modes per layer (``kind="dense"``:
    p ignored) on an MNIST subset, trained as in :func:`run_mnist` (no analyses): one point of
    the least-number-of-modes measurement."""
    r = run_mnist(kind=kind, p=p, hidden=[width] * depth, seed=seed, epochs=epochs, patience=patience, lr=lr,
                  batch=batch, step_size=step_size, gamma=gamma, n_train=n_train, n_val=n_val, n_test=n_test,
                  representations=False, dtype=dtype, mnist_path=mnist_path)
    keep = ("test_acc", "val_acc", "n_params", "epochs", "best_epoch", "status", "seconds")
    return {k: r[k] for k in keep} | {"width": int(width), "p": r["p"], "kind": kind}
