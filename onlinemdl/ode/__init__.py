"""The order-parameter ODEs: kernels (right-hand sides), the system, the integrator, fixed points."""
from .fixed_points import (
                           FixedPoint,
                           escape_time,
                           fixed_point,
                           plateau_fixed_points,
                           relaxation,
                           state_at,
                           symmetric_fixed_point,
)
from .integrate import integrate
from .system import OdeSystem, finite_difference_jacobian

__all__ = ["OdeSystem", "integrate", "finite_difference_jacobian", "FixedPoint", "fixed_point",
           "symmetric_fixed_point", "escape_time", "state_at", "plateau_fixed_points", "relaxation"]
