"""The flat-parameter recipes of scans and the command line (onlinemdl.recipes)."""
import numpy as np

import onlinemdl as om
from onlinemdl.model import mode_scale
from onlinemdl.recipes import NETWORK_PARAMS, networks, run_ode


def test_fresh_runs_take_the_initializers_variance():
    """run_ode(fluctuations="fresh") passes on the variance with which networks() draws the weights."""
    small = dict(N=50, M=2, teacher="random", student="full", eta=0.5, alpha_max=5.0, points=6)
    for init, scale2 in (("large", 1.0), ("small", 1 / 50)):
        ode = run_ode(**small, init=init, fluctuations="fresh")
        teacher, student = networks(**{k: v for k, v in small.items() if k in NETWORK_PARAMS}, init=init)
        ref = om.integrate(student, teacher, eta=0.5, alpha=ode.alpha, fluctuations="fresh", init_variance=scale2)
        np.testing.assert_allclose(ode.eps_g_sd, ref.eps_g_sd, rtol=1e-12)
        np.testing.assert_allclose(ode.Q[0], scale2 * np.eye(2), rtol=1e-12)
    ode = run_ode(N=50, M=2, alpha_max=5.0, points=6, fluctuations="fresh")  # the paper's setting: fresh Xi
    np.testing.assert_allclose(np.diag(ode.Rm[0]), mode_scale(50) ** 2 * np.ones(ode.Rm.shape[1]), rtol=1e-12)
