"""The SGD engine: explicit against gram, simulation against ODE, reproducibility, bad input."""
import numpy as np
import pytest

import onlinemdl as om
from onlinemdl.model import mode_scale


def two_sample_ok(x, y, k=4.5):
    """Means and standard deviations of two samples agree within k standard errors."""
    x, y = np.asarray(x), np.asarray(y)
    se = np.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    z_mean = abs(x.mean() - y.mean()) / se
    se_log = np.sqrt(1 / (2 * (x.size - 1)) + 1 / (2 * (y.size - 1)))
    z_std = abs(np.log(x.std(ddof=1) / y.std(ddof=1))) / se_log
    return z_mean < k and z_std < k, (z_mean, z_std)


CASES = {
    "full": lambda: (om.Teacher.orthonormal(30, 2, seed=0), om.Student.full(30, 2, seed=1, scale=0.5)),
    "full_in_teacher_span": lambda: (om.Teacher.random(25, 2, seed=0),
                                     om.Student.full(25, 3, init="informed", overlap=1.0, seed=1,
                                                     teacher=om.Teacher.random(25, 2, seed=0))),
    "modes_xi": lambda: ((t := om.Teacher.modes(30, 8, seed=0)), om.Student.from_teacher_modes(t, seed=1)),
    "modes_all": lambda: (om.Teacher.modes(30, 4, seed=0, sigma=0.2),
                          om.Student.modes(30, 4, 3, seed=1, train=("xi", "lam", "A", "v"))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_explicit_and_gram_agree_in_distribution(case):
    teacher, student = CASES[case]()
    eta = 5.0 if case == "modes_xi" else 1.0
    kw = dict(eta=eta, alpha=[0.0, 2.0, 10.0], replicas=300, seed=3)
    ex = om.simulate(student, teacher, method="explicit", **kw)
    gr = om.simulate(student, teacher, method="gram", **kw)
    for name in ("eps_g", "Q", "R"):
        a, b = getattr(ex, name)[:, -1], getattr(gr, name)[:, -1]
        for idx in [(...,)] if name == "eps_g" else [(slice(None), 0, 0), (slice(None), 0, -1)]:
            ok, z = two_sample_ok(a[idx], b[idx])
            assert ok, (name, z)


def _agree(ex, gr, entries):
    for name, idx in entries:
        ok, z = two_sample_ok(getattr(ex, name)[(slice(None), -1) + idx], getattr(gr, name)[(slice(None), -1) + idx])
        assert ok, (name, idx, z)


EPS_Q_R = [("eps_g", ()), ("Q", (0, 0)), ("Q", (0, -1)), ("R", (0, 0)), ("R", (-1, -1))]


@pytest.mark.slow
def test_explicit_and_gram_agree_in_distribution_k32():
    # the Gram chain's factor update at large K (K = M = 32, 64 fields)
    teacher, student = om.Teacher.orthonormal(100, 32, seed=0), om.Student.full(100, 32, seed=1, scale=0.5)
    kw = dict(eta=1.0, alpha=[0.0, 1.0, 4.0], replicas=200, seed=3)
    _agree(om.simulate(student, teacher, method="explicit", **kw), om.simulate(student, teacher, method="gram", **kw),
           EPS_Q_R)


@pytest.mark.parametrize("N", [40, 9])
def test_explicit_and_gram_agree_with_batch_and_decay(N):
    # a batch of 3 and weight decay: the rank-3 factor update (N = 40) and, for N < K + M + batch,
    # the refactored chain (N = 9)
    teacher = om.Teacher.random(N, 3, seed=0, sigma=0.3)
    student = om.Student.full(N, 3, seed=1, scale=0.5, batch=3, weight_decay=0.5)
    kw = dict(eta=1.5, alpha=[0.0, 2.0, 6.0], replicas=300, seed=4)
    _agree(om.simulate(student, teacher, method="explicit", **kw), om.simulate(student, teacher, method="gram", **kw),
           EPS_Q_R)


def test_gram_detects_a_wrong_chain():
    # the two-sample check has power: a chain whose eta^2 term is 4x too small (a batch of 4) is caught
    teacher, student = CASES["full"]()
    kw = dict(eta=1.5, alpha=[0.0, 10.0], replicas=300, seed=3, method="gram")
    ref = om.simulate(student, teacher, **kw)
    other = om.simulate(om.Student.full(30, 2, seed=1, scale=0.5, batch=4), teacher, **kw)
    ok, _ = two_sample_ok(ref.Q[:, -1, 0, 0], other.Q[:, -1, 0, 0])
    assert not ok


def max_gap(student, teacher, eta, alpha, replicas, seed):
    ode = om.integrate(student, teacher, eta=eta, alpha=alpha)
    sim = om.simulate(student, teacher, eta=eta, alpha=alpha, replicas=replicas, seed=seed, method="gram")
    return np.max(np.abs(sim.mean().eps_g - ode.eps_g) / ode.eps_g)


def test_simulation_approaches_ode_like_inverse_sqrt_n_classic():
    Ns = [100, 1000, 10_000, 100_000]
    alpha = np.linspace(0, 4, 9)
    gaps = [max_gap(om.Student.full(N, 2, seed=1, scale=0.7), om.Teacher.orthonormal(N, 2, seed=0), 1.0, alpha, 6, 5)
            for N in Ns]
    slope = np.polyfit(np.log(Ns), np.log(gaps), 1)[0]
    assert gaps[-1] < gaps[0] / 10
    assert -0.8 < slope < -0.3, (gaps, slope)


def test_simulation_approaches_ode_mode_setting():
    # the paper's setting (K = M = 8, p = 3, only Xi trained, eta = 5) with the same modes A, lam at every N
    Ns = [30, 300, 3000]
    alpha = np.array([0.0, 3.0, 10.0, 30.0, 100.0])
    base = om.Teacher.modes(30, 8, seed=0)
    gaps = []
    for N in Ns:
        Xi = mode_scale(30) * np.random.default_rng(N).standard_normal((N, 3))
        teacher = om.Teacher((base.A * base.lam) @ Xi.T, A=base.A, lam=base.lam, Xi=Xi)
        gaps.append(max_gap(om.Student.from_teacher_modes(teacher, seed=1), teacher, 5.0, alpha, 8, 7))
    slope = np.polyfit(np.log(Ns), np.log(gaps), 1)[0]
    assert gaps[-1] < gaps[0] / 5
    assert -0.9 < slope < -0.3, (gaps, slope)


@pytest.mark.parametrize("method", ["explicit", "gram"])
def test_same_seed_same_bits_whatever_the_threads(method):
    teacher, student = CASES["modes_all"]()
    kw = dict(eta=1.0, alpha=[0.0, 1.0, 3.0], replicas=4, seed=11, method=method)
    one = om.simulate(student, teacher, threads=1, **kw)
    two = om.simulate(student, teacher, threads=2, **kw)
    for name in ("eps_g", "Q", "R", "Rm", "S", "lam", "A", "v"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
    other = om.simulate(student, teacher, threads=2, **{**kw, "seed": 12})
    assert not np.array_equal(one.eps_g, other.eps_g)
    assert not np.array_equal(one.eps_g[0], one.eps_g[1])  # replicas use different streams


def test_test_set_estimate_matches_closed_form():
    teacher, student = CASES["full"]()
    sim = om.simulate(student, teacher, eta=1.0, alpha=[0.0, 1.0, 5.0], replicas=4, seed=0, method="explicit", test_set=20_000)
    rel = np.abs(sim.eps_test / sim.eps_g - 1)
    assert np.all(rel < 0.05), rel


def test_single_replica_has_no_replica_axis_and_records_grid():
    teacher, student = CASES["modes_xi"]()
    sim = om.simulate(student, teacher, eta=5.0, alpha_max=2.0, points=20, seed=0)
    assert sim.eps_g.ndim == 1 and sim.Q.shape == (len(sim.alpha), 8, 8)
    np.testing.assert_array_equal(sim.steps, np.rint(sim.alpha * 30))
    assert sim.kind == "sgd" and sim.status == "ok"
    assert sim.mean() is sim


def test_diverging_replicas_are_flagged_not_averaged():
    teacher = om.Teacher.orthonormal(50, 2, seed=0, activation="linear")
    student = om.Student.full(50, 2, seed=1, activation="linear")
    for method in ("explicit", "gram"):
        sim = om.simulate(student, teacher, eta=30.0, alpha_max=50.0, replicas=3, seed=0, method=method)
        assert sim.status == "diverged" and sim.diverged.all()
        assert np.all(np.isfinite(sim.alpha_diverged)) and "diverged" in sim.message
        assert np.all(np.isfinite(sim.eps_g[:, 0]))


def test_mean_excludes_diverged_replicas():
    teacher, student = CASES["full"]()
    sim = om.simulate(student, teacher, eta=1.0, alpha=[0.0, 1.0], replicas=3, seed=0)
    sim.diverged = np.array([False, True, False])
    sim.eps_g[1] = np.nan
    np.testing.assert_allclose(sim.mean().eps_g, sim.eps_g[[0, 2]].mean(0))


@pytest.mark.parametrize("kwargs,match", [
    (dict(eta=-1.0, alpha_max=1), "eta"), (dict(eta=1.0), "alpha_max"), (dict(eta=1.0, alpha_max=1, method="x"), "method"),
    (dict(eta=1.0, alpha_max=1, replicas=0), "replicas"), (dict(eta=1.0, alpha_max=1, threads=0), "threads"),
    (dict(eta=1.0, alpha_max=1, method="gram", test_set=10), "test_set"), (dict(eta=1.0, alpha=[1, 0]), "alpha"),
])
def test_bad_arguments(kwargs, match):
    teacher, student = CASES["full"]()
    with pytest.raises(ValueError, match=match):
        om.simulate(student, teacher, **kwargs)


@pytest.mark.parametrize("r,b", [(1, 1), (5, 1), (6, 3), (32, 2)])
def test_triangular_factor_update_is_exact(r, b):
    # [R; 0] + sum_s e_s d_s^T, reduced by Givens rotations: the new R keeps the Gram matrix, R'^T R' = X^T X
    from onlinemdl.sgd.kernels import _triangular_update
    rng = np.random.default_rng(r + b)
    R = np.zeros((r + b, r))
    R[:r] = np.triu(rng.standard_normal((r, r)))
    R[1, :] = 0.0  # a semidefinite factor (a zero row) is handled as well
    E, D = rng.standard_normal((b, r + b)), rng.standard_normal((b, r))
    X = R + E.T @ D
    for s in range(b):
        _triangular_update(R, E, s, D[s])
    assert np.all(R[r:] == 0.0) and np.allclose(R[:r], np.triu(R[:r]), rtol=0, atol=0)
    np.testing.assert_allclose(R.T @ R, X.T @ X, rtol=1e-12, atol=1e-12 * np.abs(X.T @ X).max())
