"""onlinemdl: on-line learning dynamics of mode decomposition learning."""
__version__ = "0.1.0"

from .model import Student, Teacher
from .ode import OdeSystem, integrate
from .sgd import simulate
from .trajectory import Trajectory

__all__ = ["Student", "Teacher", "OdeSystem", "Trajectory", "integrate", "simulate", "__version__"]

from . import analysis
from .analysis import escape_time, find_plateaus, fixed_point, mode_picture, specialization, symmetric_fixed_point

__all__ += ["analysis", "escape_time", "find_plateaus", "fixed_point", "mode_picture", "specialization",
            "symmetric_fixed_point"]

from .scan import load_scan, scan

__all__ += ["scan", "load_scan"]
