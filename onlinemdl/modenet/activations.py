"""Hidden-unit activations g(z) and their derivatives g'(z), elementwise on arrays.

A derivative may come back as a boolean mask (ReLU): use it as a factor, ``dh * g'(z)``."""
import numpy as np
from scipy.special import erf

_SQRT_HALF = np.sqrt(0.5)
_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)


def _relu(z):
    return np.maximum(z, 0)


def _drelu(z):
    return z > 0  # a mask: multiplying by it is g'(z)


def _tanh(z):
    return np.tanh(z)


def _dtanh(z):
    # g' = 1 - tanh^2
    t = np.tanh(z)
    return 1 - t * t


def _erf(z):
    # g = erf(z / sqrt 2)
    return erf(z * z.dtype.type(_SQRT_HALF))


def _derf(z):
    # g' = sqrt(2 / pi) exp(-z^2 / 2)
    return z.dtype.type(_SQRT_2_OVER_PI) * np.exp(z.dtype.type(-0.5) * z * z)


def _linear(z):
    return z


def _dlinear(z):
    return np.ones_like(z)


#: name -> (g, g')
ACTIVATIONS = {
    "relu": (_relu, _drelu),
    "tanh": (_tanh, _dtanh),
    "erf": (_erf, _derf),
    "linear": (_linear, _dlinear),
}


def get(name):
    """The pair (g, g') of the activation ``name``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]
