"""onlinemdl: on-line learning dynamics of mode decomposition learning.

Models (:class:`Teacher`, :class:`Student`) and their :class:`Dynamics` go into
:func:`integrate` (order-parameter ODEs) or :func:`simulate` (on-line SGD); both return a
:class:`Trajectory`, which the analysis (:mod:`onlinemdl.analysis`), the figures
(:mod:`onlinemdl.plotting`), the HDF5 storage and the scans (:func:`scan`) consume.

The names below are imported on first use (PEP 562), so ``import onlinemdl`` is cheap and a
process pays for Numba, SciPy and h5py only when it needs them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

#: Public name -> module that defines it.
_EXPORTS = {
    "Teacher": "model", "Student": "model",
    "Dynamics": "dynamics",
    "OdeSystem": "ode", "integrate": "ode", "fixed_point": "ode", "symmetric_fixed_point": "ode",
    "escape_time": "ode", "plateau_fixed_points": "ode", "state_at": "ode", "relaxation": "ode",
    "simulate": "sgd",
    "Trajectory": "trajectory",
    "save_trajectory": "storage", "load_trajectory": "storage",
    "scan": "scan", "load_scan": "scan",
    "find_plateaus": "analysis", "specialization": "analysis", "mode_picture": "analysis",
    "local_exponent": "analysis",
    "stage_theory": "stages", "ensemble": "stages",
}
_SUBMODULES = ("analysis", "plotting", "modenet", "recipes", "storage", "runsetup", "dynamics", "model", "ode",
               "sgd", "scan", "stages", "trajectory", "gaussian")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from . import analysis, plotting  # noqa: F401
    from .analysis import find_plateaus, local_exponent, mode_picture, specialization  # noqa: F401
    from .dynamics import Dynamics  # noqa: F401
    from .model import Student, Teacher  # noqa: F401
    from .ode import (  # noqa: F401
        OdeSystem,
        escape_time,
        fixed_point,
        integrate,
        plateau_fixed_points,
        relaxation,
        state_at,
        symmetric_fixed_point,
    )
    from .scan import load_scan, scan  # noqa: F401
    from .sgd import simulate  # noqa: F401
    from .stages import ensemble, stage_theory  # noqa: F401
    from .storage import load_trajectory, save_trajectory  # noqa: F401
    from .trajectory import Trajectory  # noqa: F401
