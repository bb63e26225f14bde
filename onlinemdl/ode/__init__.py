"""The order-parameter ODEs: kernels (right-hand sides), the system, the integrator, fixed points, and
the finite-N theory around them (:mod:`onlinemdl.ode.fluctuations`, built on :mod:`~onlinemdl.ode.noise` and
:mod:`~onlinemdl.ode.propagation`; plateau lengths in :mod:`~onlinemdl.ode.escape`)."""
from .escape import escape_distribution, escape_times
from .fixed_points import (
                           FixedPoint,
                           escape_time,
                           fixed_point,
                           plateau_fixed_points,
                           relaxation,
                           state_at,
                           symmetric_fixed_point,
)
from .fluctuations import predict
from .integrate import integrate
from .noise import finite_n_drift, noise_covariance
from .system import OdeSystem, finite_difference_jacobian

__all__ = ["OdeSystem", "integrate", "finite_difference_jacobian", "FixedPoint", "fixed_point",
           "symmetric_fixed_point", "escape_time", "state_at", "plateau_fixed_points", "relaxation",
           "noise_covariance", "finite_n_drift", "predict", "escape_distribution", "escape_times"]
