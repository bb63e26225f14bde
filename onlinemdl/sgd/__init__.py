"""The on-line SGD engine: Numba kernels (explicit and Gram chain) and the driver :func:`simulate`."""
from .simulate import METHODS, simulate

__all__ = ["simulate", "METHODS"]
