"""onlinemdl: on-line learning dynamics of mode decomposition learning.

Models (:class:`Teacher`, :class:`Student`) go into :func:`integrate` (order-parameter ODEs)
or :func:`simulate` (on-line SGD); both return a :class:`Trajectory`, which the analysis
(:mod:`onlinemdl.analysis`), the figures (:mod:`onlinemdl.plotting`), the HDF5 storage and
the scans (:func:`scan`) consume.
"""
__version__ = "0.1.0"

from . import analysis
from .analysis import escape_time, find_plateaus, fixed_point, mode_picture, specialization, symmetric_fixed_point
from .model import Student, Teacher
from .ode import OdeSystem, integrate
from .scan import load_scan, scan
from .sgd import simulate
from .trajectory import Trajectory

__all__ = ["Student", "Teacher", "OdeSystem", "Trajectory", "integrate", "simulate", "scan", "load_scan", "analysis",
           "find_plateaus", "specialization", "mode_picture", "fixed_point", "symmetric_fixed_point", "escape_time",
           "__version__"]
