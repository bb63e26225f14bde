"""Shared set-up and helpers of the test suite.

Markers: ``slow`` (notebooks, dask, process pools, kill tests, long Monte Carlo) is left out of
the inner loop ``pytest -m "not slow"``; CI runs everything.
"""
import os
import zlib
from dataclasses import fields

import matplotlib
import numpy as np
import pytest
from scipy.special import erf

from onlinemdl.trajectory import Trajectory

matplotlib.use("Agg")
os.environ.setdefault("ONLINEMDL_QUICK", "1")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's own id: the same numbers in every process and on every
    rerun, so a failure can be replayed (``pytest 'tests/test_x.py::test_y[case]'``)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def same(a, b):
    """Strict equality: same types, dtypes, shapes and values (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (np.ndarray, np.generic)):
        if a.dtype != b.dtype or np.shape(a) != np.shape(b):
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def assert_same_trajectory(a, b):
    for f in fields(Trajectory):
        assert same(getattr(a, f.name), getattr(b, f.name)), f.name


def descendants(pid: int) -> list:
    """Pids of the living (not zombie) descendants of ``pid``, read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if rest[0] != "Z":
                parents.setdefault(int(rest[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def g(z, act):
    """The activation: erf(z / sqrt 2) or z."""
    return erf(z / np.sqrt(2)) if act == "erf" else z


def dg(z, act):
    """Its derivative."""
    return np.sqrt(2 / np.pi) * np.exp(-z**2 / 2) if act == "erf" else np.ones_like(z)


def mc_steps(system, state, rng, n):
    """N x (change of the state vector) of ``n`` independent SGD steps (batch b), drawn in field space
    at leading order (|x|^2 / N = 1, x^s . x^s' / N = 0), written independently of the package.

    The trained N-dimensional vectors (rows of W, or columns of Xi) have fields s; the teacher's
    fields are u. One step with a mini-batch of b samples changes the Gram matrix by
    (-eta/b) sum (d s^T + s d^T) / N + (eta/b)^2 sum d d^T |x|^2 / N^2, so N x change is returned.
    """
    K, M, b = system.K, system.M, system.batch
    modes = system.form == "modes"
    G, S = (state["Rm"], state["S"]) if modes else (state["Q"], state["R"])
    r = G.shape[0]
    w, U = np.linalg.eigh(np.block([[G, S], [S.T, system.T]]))
    L = U * np.sqrt(np.clip(w, 0, None))
    C = state["A"] * state["lam"] if modes else np.eye(K)
    v, vt, act, eta, kap = state["v"], system.vt, system.activation, system.eta, system.weight_decay
    f = rng.standard_normal((n, b, r + M)) @ L.T
    s, u = f[..., :r], f[..., r:]
    h = s @ C.T
    err = g(h, act) @ v - g(u, act) @ vt - system.sigma * rng.standard_normal((n, b))
    delta = v * dg(h, act) * err[..., None]
    d = delta @ C
    iu = np.triu_indices(r)
    parts = []
    if system.dynamics.trains_n:
        dG = (-eta / b) * np.einsum("cba,cbe->cae", d, s)
        dG = dG + dG.transpose(0, 2, 1) + (eta / b) ** 2 * np.einsum("cba,cbe->cae", d, d) - 2 * eta * kap * G
        dS = (-eta / b) * np.einsum("cba,cbn->can", d, u) - eta * kap * S
        parts += [dG[:, iu[0], iu[1]], dS.reshape(n, -1)]
    else:
        parts += [np.zeros((n, iu[0].size)), np.zeros((n, S.size))]
    X = np.einsum("cbi,cbm->cim", delta, s) / b
    if modes and "lam" in system.train:
        parts.append(-system.eta_lam * np.einsum("im,cim->cm", state["A"], X))
    if modes and "A" in system.train:
        parts.append((-system.eta_A * state["lam"] * X).reshape(n, -1))
    if "v" in system.train:
        parts.append(-system.eta_v * np.einsum("cb,cbi->ci", err, g(h, act)) / b)
    return np.concatenate(parts, axis=1)
