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
    val_acc : (epochs,) accuracy on the held-out validation data (NaN without it).
    lr : (epochs,) learning rate used.
    seconds : (epochs,) wall time of each epoch's updates (evaluation excluded).
    status : "ok", "stopped" (early stopping: the validation accuracy stopped improving; the
        network holds the parameters of ``best_epoch``) or "diverged" (the training loss became
        non-finite or exceeded ``diverge_factor`` times its initial value; the record stops before
        that epoch and the network holds the parameters of the last good epoch).
    message : what happened, in words ("" when nothing to report).
    best_epoch : index of the epoch whose parameters the network holds (-1: none, the initial ones).
    diverged_at : index of the epoch that diverged (-1 if none).
    """

    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    train_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    status: str = "ok"
    message: str = ""
    val_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_epoch: int = -1
    diverged_at: int = -1

    ARRAYS = ("loss", "train_acc", "test_acc", "val_acc", "lr", "seconds")

    def as_dict(self):
        return {k: getattr(self, k) for k in self.ARRAYS}

    @property
    def epochs(self) -> int:
        return len(self.loss)

    @property
    def final_test_acc(self) -> float:
        """Test accuracy of the parameters the network holds (NaN without test data or epochs)."""
        if self.best_epoch < 0 or self.best_epoch >= len(self.test_acc):
            return float("nan")
        return float(self.test_acc[self.best_epoch])


def check_data(net, X, y, name="X", label_name="y"):
    """``(X, y)`` as arrays the network takes; ValueError naming the parameter when they do not fit."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (samples x {net.n_inputs} features), got shape {X.shape}")
    if X.shape[1] != net.n_inputs:
        raise ValueError(f"{name} has {X.shape[1]} features per sample, the network takes {net.n_inputs}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has no samples")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=net.dtype)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    y = np.asarray(y)
    if y.shape[:1] != X.shape[:1]:
        raise ValueError(f"{name} and {label_name} must have the same number of samples, got {X.shape[0]} and "
                         f"{y.shape[0] if y.ndim else 'a scalar'}")
    if net.output == "softmax":
        if y.ndim != 1 or y.dtype.kind not in "biu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
            raise ValueError(f"{label_name} must be a 1-d array of integer class labels, got shape {y.shape}, "
                             f"dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= net.n_outputs):
            raise ValueError(f"{label_name} must hold class labels in [0, {net.n_outputs - 1}] (the network has "
                             f"{net.n_outputs} outputs), got labels from {int(y.min())} to {int(y.max())}")
        y = y.astype(np.intp)
    else:
        if y.dtype.kind not in "biuf" or y.reshape(len(y), -1).shape[1] != net.n_outputs:
            raise ValueError(f"{label_name} must hold {net.n_outputs} number(s) per sample, got shape {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{label_name} holds non-finite values (NaN or inf)")
        y = np.ascontiguousarray(y, dtype=net.dtype)
    return X, y


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def fit(net, X, y, epochs=10, batch_size=32, optimizer="adam", lr=1e-3, momentum=0.0,
        schedule="constant", seed=0, X_test=None, y_test=None, progress=False, validation=None,
        patience=None, min_delta=0.0, diverge_factor=1e4, track_train=True, **schedule_kw):
    """Train ``net`` in place by mini-batch descent on (X, y) and return its :class:`History`.

    Parameters
    ----------
    epochs : most epochs to run.
    batch_size : samples per update.
    optimizer : "sgd", "adam", or an optimiser object (then ``lr`` and ``momentum`` are unused).
    schedule : "constant", "step", "exponential" or "cosine" (options in ``schedule_kw``), or a
        callable epoch -> learning-rate factor.
    seed : seed of the mini-batch order.
    X_test, y_test : test data, evaluated after every epoch (never used for decisions).
    progress : show a progress bar over epochs (tqdm).
    validation : ``(X_val, y_val)`` held-out data for early stopping (the convergence criterion).
    patience : with ``validation``: stop when the validation accuracy has not improved by more than
        ``min_delta`` for ``patience`` epochs, and restore the parameters of the best epoch
        (status "stopped"). None: run all epochs, keep the last parameters.
    diverge_factor : the run diverges when the epoch's mean training loss is non-finite or exceeds
        ``diverge_factor`` times the loss of the initial network on the first mini-batch.
    track_train : evaluate the training accuracy after every epoch (NaN in the record otherwise;
        it costs a forward pass over the training data).
    """
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    X, y = check_data(net, X, y)
    if X_test is not None:
        X_test, y_test = check_data(net, X_test, y_test, "X_test", "y_test")
    if validation is not None:
        if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
            raise ValueError("validation must be a pair (X_val, y_val)")
        X_val, y_val = check_data(net, *validation, "X_val", "y_val")
    if patience is not None:
        patience = _check_int("patience", patience, 1)
        if validation is None:
            raise ValueError("patience needs validation=(X_val, y_val)")
    if not (np.isfinite(diverge_factor) and diverge_factor > 1):
        raise ValueError(f"diverge_factor must be a finite number > 1, got {diverge_factor!r}")
    opt = optimizer if isinstance(optimizer, (SGD, Adam)) else make_optimizer(optimizer, lr, momentum)
    factor = schedule if callable(schedule) else make_schedule(schedule, epochs, **schedule_kw)
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    initial = limit = None  # the loss of the first mini-batch, before its update, sets the divergence limit
    rec = {k: [] for k in History.ARRAYS}
    status, message, best_epoch, best_val, diverged_at, since_best = "ok", "", -1, -np.inf, -1, 0
    good = {k: v.copy() for k, v in net.params.items()}  # parameters of the epoch the network will hold
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
                loss, grads = net.loss_and_grad(X[idx], y[idx], check=False)
                if initial is None:
                    initial = float(loss)
                    limit = diverge_factor * max(abs(initial), 1e-12) if np.isfinite(initial) else np.inf
                opt.step(net.params, grads, f)
                total += loss * len(idx)
        seconds = time.perf_counter() - t0
        mean_loss = total / n
        finite = np.isfinite(mean_loss) and all(np.all(np.isfinite(v)) for v in net.params.values())
        if not finite or mean_loss > limit:
            status, diverged_at = "diverged", epoch
            why = "non-finite" if not finite else f"above {diverge_factor:g} x the initial {initial:.3g}"
            held = f"epoch {best_epoch}" if best_epoch >= 0 else "its initialisation"
            message = (f"diverged at epoch {epoch}: mean training loss {mean_loss:.3g} ({why}); "
                       f"the network holds the parameters of {held}")
            break
        rec["loss"].append(mean_loss)
        rec["lr"].append(opt.lr * f)
        rec["seconds"].append(seconds)
        rec["train_acc"].append(net.accuracy(X, y) if track_train else np.nan)
        rec["test_acc"].append(net.accuracy(X_test, y_test) if X_test is not None else np.nan)
        rec["val_acc"].append(net.accuracy(X_val, y_val) if validation is not None else np.nan)
        if patience is None:
            best_epoch = epoch
            good = {k: v.copy() for k, v in net.params.items()}
        elif rec["val_acc"][-1] > best_val + min_delta or best_epoch < 0:
            best_epoch, best_val, since_best = epoch, rec["val_acc"][-1], 0
            good = {k: v.copy() for k, v in net.params.items()}
        else:
            since_best += 1
            if since_best >= patience:
                status = "stopped"
                message = (f"stopped after epoch {epoch}: validation accuracy no better than {best_val:.4f} "
                           f"(epoch {best_epoch}) for {patience} epochs")
                break
        if progress:
            epochs_iter.set_postfix(loss=f"{mean_loss:.4f}", test=f"{rec['test_acc'][-1]:.3f}")
    if status != "ok" or best_epoch != len(rec["loss"]) - 1:
        for k, v in good.items():
            net.params[k][...] = v  # in place: layers and shared arrays keep their references
    return History(**{k: np.asarray(v, dtype=float) for k, v in rec.items()}, status=status, message=message,
                   best_epoch=best_epoch, diverged_at=diverged_at)


def train_model(data, hidden, kind="modes", p=None, activation="relu", epochs=20, batch_size=32,
                optimizer="adam", lr=3e-3, momentum=0.0, schedule="constant", seed=0, dtype="float64",
                bias=True, mu=1.0, progress=False, **fit_kw):
    """Build a network of widths ``[features, *hidden, outputs]`` for a :class:`~.data.Dataset`
    (softmax for classes, linear otherwise), train it, and return ``(net, history)``.

    ``fit_kw`` goes to :func:`fit` (``validation``, ``patience``, ``track_train``, schedule options).
    """
    from .network import Network
    widths = [data.n_features, *hidden, data.n_outputs]
    output = "softmax" if data.n_classes else "linear"
    net = Network.build(widths, kind=kind, p=p, activation=activation, output=output, bias=bias, mu=mu,
                        dtype=dtype, seed=seed)
    history = fit(net, data.X_train, data.y_train, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                  lr=lr, momentum=momentum, schedule=schedule, seed=seed, X_test=data.X_test,
                  y_test=data.y_test, progress=progress, **fit_kw)
    return net, history
