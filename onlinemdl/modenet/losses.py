"""Output layers with their losses: softmax + cross-entropy, linear + mean squared error.

Each ``loss(z, y)`` returns the batch-mean loss and ``dL/dz``.
"""
import numpy as np


def softmax(z):
    """Row-wise softmax p_k = exp(z_k) / sum_j exp(z_j), shifted for stability."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(z, y):
    """L = -(1/B) sum_b ln p_(b, y_b), dL/dz = (p - onehot(y)) / B, for integer labels ``y``."""
    B = z.shape[0]
    zs = z - z.max(axis=1, keepdims=True)
    e = np.exp(zs)
    total = e.sum(axis=1)
    rows = np.arange(B)
    picked = zs[rows, y]
    loss = float(np.log(total).sum() - picked.sum()) / B
    total *= B
    dz = e / total[:, None]  # p / B
    dz[rows, y] -= 1.0 / B
    return loss, dz


def mse(z, y):
    """L = (1 / 2B) sum_b ||z_b - y_b||^2, dL/dz = (z - y) / B."""
    d = z - y.reshape(z.shape)
    return 0.5 * float(np.sum(d * d)) / z.shape[0], d / z.shape[0]


#: output name -> (map from the last layer's fields to predictions, loss)
OUTPUTS = {"softmax": (softmax, cross_entropy), "linear": (lambda z: z, mse)}


def get(name):
    """The pair (output map, loss) of the output ``name``."""
    if name not in OUTPUTS:
        raise ValueError(f"output must be one of {sorted(OUTPUTS)}, got {name!r}")
    return OUTPUTS[name]
