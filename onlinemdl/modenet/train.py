"""Mini-batch training loop with per-epoch history."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .optim import SGD, Adam, make_optimizer, schedule as make_schedule


@dataclass
class History:
    """Per-epoch record of a training run.

    Attributes
    ----------
    loss : (epochs,) mean training loss over the epoch's mini-batches.
    train_acc, test_acc : (epochs,) accuracies after each epoch (test_acc NaN without test data).
    lr : (epochs,) learning rate used.
    seconds : (epochs,) wall time of each epoch's updates (evaluation excluded).
    status : "ok" or "diverged" (non-finite loss; training stopped there).
    """

    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    train_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    status: str = "ok"
    message: str = ""

    def as_dict(self):
        return {k: getattr(self, k) for k in ("loss", "train_acc", "test_acc", "lr", "seconds")}


def fit(net, X, y, epochs=10, batch_size=32, optimizer="adam", lr=1e-3, momentum=0.0,
        schedule="constant", seed=0, X_test=None, y_test=None, progress=False, **schedule_kw):
    """Train ``net`` in place by mini-batch descent on (X, y) and return its :class:`History`.

    Parameters
    ----------
    optimizer : "sgd", "adam", or an optimiser object (then ``lr`` and ``momentum`` are unused).
    schedule : "constant", "step", "exponential" or "cosine" (options in ``schedule_kw``), or a
        callable epoch -> learning-rate factor.
    seed : seed of the mini-batch order.
    progress : show a progress bar over epochs (tqdm).
    """
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    X = np.ascontiguousarray(X, dtype=net.dtype)
    y = np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y must have the same number of samples, got {X.shape[0]} and {y.shape[0]}")
    opt = optimizer if isinstance(optimizer, (SGD, Adam)) else make_optimizer(optimizer, lr, momentum)
    factor = schedule if callable(schedule) else make_schedule(schedule, epochs, **schedule_kw)
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    rec = {k: [] for k in ("loss", "train_acc", "test_acc", "lr", "seconds")}
    status, message = "ok", ""
    epochs_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs_iter = tqdm(epochs_iter, desc="epochs", unit="epoch")
    for epoch in epochs_iter:
        f = factor(epoch)
        order = rng.permutation(n)
        t0 = time.perf_counter()
        total = 0.0
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the status
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                loss, grads = net.loss_and_grad(X[idx], y[idx])
                opt.step(net.params, grads, f)
                total += loss * len(idx)
        seconds = time.perf_counter() - t0
        mean_loss = total / n
        rec["loss"].append(mean_loss)
        rec["lr"].append(opt.lr * f)
        rec["seconds"].append(seconds)
        if not np.isfinite(mean_loss):
            status, message = "diverged", f"non-finite training loss at epoch {epoch}"
            rec["train_acc"].append(np.nan)
            rec["test_acc"].append(np.nan)
            break
        rec["train_acc"].append(net.accuracy(X, y))
        rec["test_acc"].append(net.accuracy(X_test, y_test) if X_test is not None else np.nan)
        if progress:
            epochs_iter.set_postfix(loss=f"{mean_loss:.4f}", test=f"{rec['test_acc'][-1]:.3f}")
    return History(**{k: np.asarray(v, dtype=float) for k, v in rec.items()}, status=status, message=message)


def train_model(data, hidden, kind="modes", p=None, activation="relu", epochs=20, batch_size=32,
                optimizer="adam", lr=3e-3, momentum=0.0, schedule="constant", seed=0, dtype="float64",
                bias=True, mu=1.0, progress=False):
    """Build a network of widths ``[features, *hidden, outputs]`` for a :class:`~.data.Dataset`
    (softmax for classes, linear otherwise), train it, and return ``(net, history)``."""
    from .network import Network
    widths = [data.n_features, *hidden, data.n_outputs]
    output = "softmax" if data.n_classes else "linear"
    net = Network.build(widths, kind=kind, p=p, activation=activation, output=output, bias=bias, mu=mu,
                        dtype=dtype, seed=seed)
    history = fit(net, data.X_train, data.y_train, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                  lr=lr, momentum=momentum, schedule=schedule, seed=seed, X_test=data.X_test,
                  y_test=data.y_test, progress=progress)
    return net, history
