"""Data sets: scikit-learn's digits, the IDX reader (MNIST itself is in :mod:`.mnist_data`), the XOR Gaussian
mixture of the paper's toy task, and teacher-student data of the on-line model."""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

import numpy as np

from ..runsetup import generator

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Dataset:
    """A train/test split. ``y`` holds integer labels for classification, float targets
    (n x outputs) for regression; ``n_classes`` is None for regression."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None
    name: str

    @property
    def n_features(self):
        return self.X_train.shape[1]

    @property
    def n_outputs(self):
        return self.n_classes if self.n_classes is not None else self.y_train.reshape(len(self.y_train), -1).shape[1]


def _check_fraction(name, value):
    if not (0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def stratified_split(y, test_fraction, rng):
    """Indices (train, test) with each class split in proportion ``test_fraction``."""
    _check_fraction("test_fraction", test_fraction)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def digits(test_fraction=0.25, seed=0, dtype="float64"):
    """scikit-learn's bundled 8 x 8 handwritten digits (1797 images, 10 classes), pixels scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # optional dependency
        raise ImportError("the digits data set needs scikit-learn: pip install 'onlinemdl[modenet]'") from exc
    d = load_digits()
    X = (d.data / 16.0).astype(dtype)
    y = d.target.astype(np.intp)
    tr, te = stratified_split(y, test_fraction, np.random.default_rng(seed))
    return Dataset(X[tr], y[tr], X[te], y[te], 10, "digits")


def read_idx(path):
    """The array stored in an IDX file (optionally gzip-compressed): magic 0 0 type ndim, big-endian sizes."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path} is corrupt or truncated ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dt = np.dtype(_IDX_TYPES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != dt.itemsize * int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says shape {shape}, body has {len(body)} bytes")
    return np.frombuffer(body, dtype=dt).reshape(shape)


#: the toy task's cluster centres and XOR labels: +1 where the signs of the two coordinates differ
XOR_CENTRES = np.array([[0.5, 0.5], [-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5]])
XOR_LABELS = np.array([-1.0, -1.0, 1.0, 1.0])


def xor_mixture(n, seed=None, variance=0.05):
    """``n`` points of the XOR Gaussian mixture: centres (+-0.5, +-0.5), isotropic variance
    ``variance``, label +1 where the centre's coordinates differ in sign, -1 otherwise."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 4, size=n)
    X = XOR_CENTRES[c] + np.sqrt(variance) * rng.standard_normal((n, 2))
    return X, XOR_LABELS[c].reshape(n, 1)


def xor_dataset(n_train=1000, n_test=1000, seed=0, variance=0.05, dtype="float64"):
    """Train/test split of :func:`xor_mixture` (regression targets +-1)."""
    X, y = xor_mixture(n_train + n_test, seed, variance)
    X = X.astype(dtype)
    return Dataset(X[:n_train], y[:n_train], X[n_train:], y[n_train:], None, "xor")


def teacher_student(teacher, n, seed=None, noise=True):
    """``n`` samples of the on-line model: ``x ~ N(0, I_N)``, ``y = sum_m vt_m g(B_m x / sqrt N) + sigma zeta``.

    ``seed``: an integer >= 0, or None for fresh entropy.
    """
    return draw_teacher_student(teacher, n, generator(seed), noise)


def draw_teacher_student(teacher, n, rng: np.random.Generator, noise=True):
    """:func:`teacher_student` drawing from the generator ``rng`` (continuing its stream)."""
    from scipy.special import erf
    X = rng.standard_normal((n, teacher.N))
    v = X @ teacher.B.T / np.sqrt(teacher.N)  # teacher fields
    g = erf(v / np.sqrt(2.0)) if teacher.activation == "erf" else v
    y = g @ teacher.vt
    if noise and teacher.sigma:
        y = y + teacher.sigma * rng.standard_normal(n)
    return X, y.reshape(n, 1)
