"""Regenerate ``tests/data/labelled_curves.npz``: the real ODE and SGD learning curves of the labelled set
on which the plateau/shoulder finder's defaults are chosen (``tests/test_features.py``).

Run from the repository root: ``python tests/data/make_labelled_curves.py`` (a few minutes on 2 cores).
The labels (ground truth) are in the test, next to the reason for each.
"""
from __future__ import annotations

import os

import numpy as np

import onlinemdl as om
from onlinemdl.recipes import networks

OUT = "tests/data/labelled_curves.npz"


def main():
    curves = dict(np.load(OUT)) if os.path.exists(OUT) else {}

    def keep(name, make):
        if f"{name}/alpha" in curves:
            return
        traj = make()
        eps = traj.eps_g if traj.eps_g.ndim == 2 else traj.eps_g[None]
        curves[f"{name}/alpha"] = traj.alpha
        curves[f"{name}/eps"] = eps
        print(name, traj.kind, eps.shape, traj.summary(), flush=True)
        np.savez_compressed(OUT, **curves)

    for K, eta, amax in ((2, 0.5, 3000.0), (3, 1.0, 3000.0)):
        t = om.Teacher.orthonormal(1000, K, seed=0)
        s = om.Student.full(1000, K, init="small", seed=1)
        keep(f"classic{K}_ode", lambda: om.integrate(s, t, eta=eta, alpha_max=amax))
        keep(f"classic{K}_sgd", lambda: om.simulate(s, t, eta=eta, alpha_max=amax, replicas=8, seed=0, method="gram"))
    t = om.Teacher.orthonormal(200, 2, seed=0)
    s = om.Student.full(200, 2, init="informed", teacher=t, overlap=0.9, seed=1)
    keep("informed2_ode", lambda: om.integrate(s, t, eta=0.5, alpha_max=2000.0))
    keep("informed2_sgd", lambda: om.simulate(s, t, eta=0.5, alpha_max=2000.0, replicas=8, seed=0, method="gram"))
    t = om.Teacher.random(500, 2, seed=0)
    s = om.Student.full(500, 2, init="large", seed=1)
    keep("large2_ode", lambda: om.integrate(s, t, eta=1.0, alpha_max=1e4))
    for d in range(6):
        t, s = networks(teacher_seed=d, student_seed=d + 1, train=["xi"])
        keep(f"modes{d}_ode", lambda: om.integrate(s, t, eta=5.0, alpha_max=1e5))
        if d < 3:
            keep(f"modes{d}_sgd", lambda: om.simulate(s, t, eta=5.0, alpha_max=1e5, replicas=4, seed=0,
                                                      method="gram"))
    t, s = networks(N=300, teacher_seed=0, student_seed=1, train=["xi"])
    keep("modes300_ode", lambda: om.integrate(s, t, eta=5.0, alpha_max=1e4))
    keep("modes300_sgd", lambda: om.simulate(s, t, eta=5.0, alpha_max=1e4, replicas=4, seed=0, method="gram"))
    np.savez_compressed(OUT, **curves)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
