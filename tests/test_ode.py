"""Order-parameter ODEs: right-hand sides against Monte Carlo SGD steps, exact solutions,
classic fixed points, integrators."""
import itertools

import numpy as np
import pytest
from conftest import mc_steps
from scipy.optimize import root

import onlinemdl as om
from onlinemdl.ode import OdeSystem

N_MC = 1_000_000


def random_gram(rng, n):
    X = rng.standard_normal((n, n + 2)) * rng.uniform(0.5, 1.2, size=(n, 1))
    return X @ X.T / (n + 2)


def mc_step(system, state, rng, n=N_MC, chunk=250_000):
    """N x (change of the state vector in one SGD step), per sample (:func:`conftest.mc_steps`, in chunks)."""
    return np.concatenate([mc_steps(system, state, rng, chunk) for _ in range(n // chunk)])


def assert_rhs_matches(system, state, seed):
    per = mc_step(system, state, np.random.default_rng(seed))
    mean, se = per.mean(0), per.std(0) / np.sqrt(len(per))
    rhs = system.rhs(system.pack(state))
    z = np.abs(rhs - mean) / (se + 1e-12)
    assert z.max() < 5.0, (z.max(), rhs, mean)


def random_mode_case(rng, act="erf"):
    K, M, p = rng.integers(2, 5, size=3)
    state = dict(Rm=None, S=None, A=rng.normal(0, 0.8, (K, p)), lam=rng.normal(0, 1.0, p), v=rng.uniform(0.2, 0.8, K))
    G = random_gram(rng, p + M)
    state["Rm"], state["S"], T = G[:p, :p], G[:p, p:], G[p:, p:]
    return state, T, rng.uniform(0.2, 0.8, M)


MODE_SUBSETS = [s for r in range(1, 5) for s in itertools.combinations(("xi", "lam", "A", "v"), r)]


@pytest.mark.slow
@pytest.mark.parametrize("train", MODE_SUBSETS, ids=["+".join(s) for s in MODE_SUBSETS])
def test_mode_rhs_matches_monte_carlo(train, rng):
    state, T, vt = random_mode_case(rng)
    system = OdeSystem.from_state(state, T=T, vt=vt, train=train, eta=0.7, eta_lam=0.4, eta_A=0.3, eta_v=0.5)
    assert_rhs_matches(system, state, 1)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [dict(), dict(sigma=0.5), dict(weight_decay=0.3), dict(batch=3),
                                   dict(activation="linear", sigma=0.3)])
def test_mode_rhs_with_noise_decay_batch(extra):
    rng = np.random.default_rng(11)
    state, T, vt = random_mode_case(rng)
    system = OdeSystem.from_state(state, T=T, vt=vt, train=("xi", "lam", "A", "v"), eta=0.8, **extra)
    assert_rhs_matches(system, state, 2)


@pytest.mark.slow
@pytest.mark.parametrize("train", [("w",), ("v",), ("w", "v")])
@pytest.mark.parametrize("extra", [dict(), dict(sigma=0.4, weight_decay=0.2), dict(batch=2, activation="linear")])
def test_full_rhs_matches_monte_carlo(train, extra):
    rng = np.random.default_rng(3)
    K, M = 3, 2
    G = random_gram(rng, K + M)
    state = dict(Q=G[:K, :K], R=G[:K, K:], v=rng.uniform(0.2, 1, K))
    system = OdeSystem.from_state(state, T=G[K:, K:], vt=rng.uniform(0.2, 1, M), train=train, eta=0.9,
                                  eta_v=0.6, **extra)
    assert_rhs_matches(system, state, 4)


def test_reduced_form_equals_mode_form():
    rng = np.random.default_rng(8)
    state, T, vt = random_mode_case(rng)
    modes = OdeSystem.from_state(state, T=T, vt=vt, train=("xi",), eta=2.0, sigma=0.3, weight_decay=0.1)
    reduced = OdeSystem.from_state(state, T=T, vt=vt, train=("xi",), eta=2.0, sigma=0.3, weight_decay=0.1,
                                   form="reduced")
    d = modes.unpack(modes.rhs(modes.pack(state)))
    C = state["A"] * state["lam"]
    full = modes.unpack(modes.pack(state))
    dQ = C @ d["Rm"] @ C.T
    dR = C @ d["S"]
    dr = reduced.unpack(reduced.rhs(reduced.pack(dict(Q=full["Q"], R=full["R"], v=state["v"]))))
    np.testing.assert_allclose(dr["Q"], dQ, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(dr["R"], dR, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("K,M,sigma", [(1, 1, 0.0), (3, 2, 0.3)])
def test_linear_activation_matches_exact_solution(K, M, sigma):
    # error vector D = W^T v - B^T vt obeys dq/da = (eta_e^2 - 2 eta_e) q + eta_e^2 sigma^2, eta_e = eta |v|^2
    N, eta = 200, 0.7
    teacher = om.Teacher.random(N, M, seed=0, sigma=sigma, activation="linear")
    student = om.Student.full(N, K, seed=1, activation="linear")
    alpha = np.linspace(0, 8, 9)
    traj = om.integrate(student, teacher, eta=eta, alpha=alpha, rtol=1e-10, atol=1e-12)
    D = student.W.T @ student.v - teacher.B.T @ teacher.vt
    q0 = D @ D / N
    ee = eta * student.v @ student.v
    rate = ee**2 - 2 * ee
    c = ee**2 * sigma**2 / rate
    np.testing.assert_allclose(traj.eps_g, 0.5 * ((q0 + c) * np.exp(rate * alpha) - c), rtol=1e-7)


def symmetric_fixed_point(system, guess):
    """Root of the RHS on the symmetric subspace Q_ii = q, Q_ik = c, R_in = r."""
    K, M = system.K, system.M

    def state(x):
        q, c, r = x
        return dict(Q=np.full((K, K), c) + (q - c) * np.eye(K), R=np.full((K, M), r), v=system.v)

    def resid(x):
        d = system.unpack(system.rhs(system.pack(state(x))))
        return [d["Q"][0, 0], d["Q"][0, 1], d["R"][0, 0]]

    sol = root(resid, guess, tol=1e-13)
    assert np.max(np.abs(resid(sol.x))) < 1e-12, sol.message
    return system.pack(state(sol.x))


@pytest.mark.parametrize("K", [2, 3])
def test_classic_plateau_and_symmetric_fixed_point(K):
    N, eta = 1000, 0.5
    teacher = om.Teacher.orthonormal(N, K, seed=0)
    student = om.Student.full(N, K, init="small", seed=1, scale=3.0)
    traj = om.integrate(student, teacher, eta=eta, alpha_max=2e4)
    assert traj.status == "ok"
    system, _ = OdeSystem.from_networks(student, teacher, eta=eta)
    y_fp = symmetric_fixed_point(system, [0.3, 0.3, 0.3])
    assert np.max(np.abs(system.rhs(y_fp))) < 1e-10
    level = system.eps_g(y_fp)
    # the plateau: a long stretch where eps_g sits at the fixed point's error
    near = np.abs(traj.eps_g / level - 1) < 0.02
    a_near = traj.alpha[near]
    assert a_near.size > 10 and a_near.max() / a_near.min() > 3
    assert traj.eps_g[-1] < 1e-4 * level  # realizable: decays to 0 after the plateau
    # small-eta limit: Saad & Solla's Q_ik = 1/(2K - 1)
    tiny, _ = OdeSystem.from_networks(student, teacher, eta=1e-7)
    fp = tiny.unpack(symmetric_fixed_point(tiny, [0.3, 0.3, 0.3]))
    np.testing.assert_allclose(fp["Q"], 1 / (2 * K - 1), rtol=1e-5)
    np.testing.assert_allclose(fp["R"], 1 / np.sqrt(K * (2 * K - 1)), rtol=1e-5)


@pytest.mark.parametrize("modes", [False, True])
def test_student_equal_to_teacher_is_a_fixed_point(modes):
    if modes:
        teacher = om.Teacher.modes(50, 4, seed=0)
        student = om.Student(A=teacher.A, lam=teacher.lam, Xi=teacher.Xi, v=teacher.vt, train=("xi", "lam", "A", "v"))
    else:
        teacher = om.Teacher.random(50, 3, seed=0)
        student = om.Student(W=teacher.B, v=teacher.vt, train=("w", "v"))
    system, state = OdeSystem.from_networks(student, teacher, eta=2.0)
    y = system.pack(state)
    assert system.eps_g(y) == pytest.approx(0.0, abs=1e-14)
    assert np.max(np.abs(system.rhs(y))) < 1e-12


def test_adaptive_and_euler_agree():
    N = 100
    teacher = om.Teacher.orthonormal(N, 2, seed=0)
    student = om.Student.full(N, 2, init="large", seed=1, scale=0.5)
    alpha = np.array([0.0, 2.0, 5.0, 10.0])
    ref = om.integrate(student, teacher, eta=1.0, alpha=alpha, rtol=1e-10, atol=1e-12)
    e1 = om.integrate(student, teacher, eta=1.0, alpha=alpha, method="euler", step=2e-3)
    e2 = om.integrate(student, teacher, eta=1.0, alpha=alpha, method="euler", step=1e-3)
    richardson = 2 * e2.eps_g - e1.eps_g  # first-order method: O(h^2) after extrapolation
    np.testing.assert_allclose(richardson, ref.eps_g, rtol=1e-5)
    assert np.max(np.abs(e2.eps_g / ref.eps_g - 1)) < 1e-2
    assert e1.nfev == 5000


def test_published_mode_setting_is_fast_and_multistage():
    teacher = om.Teacher.modes(30, 8, seed=0)
    student = om.Student.from_teacher_modes(teacher, seed=1)
    traj = om.integrate(student, teacher, eta=5.0, alpha_max=1e5)
    assert traj.status == "ok" and traj.nfev < 20000
    assert traj.eps_g[-1] < 1e-3 * traj.eps_g[0]
    assert traj.Rm.shape == (len(traj.alpha), 3, 3) and traj.S.shape == (len(traj.alpha), 3, 8)


def test_divergence_is_reported_not_nan():
    teacher = om.Teacher.orthonormal(100, 2, seed=0)
    student = om.Student.full(100, 2, seed=1, activation="erf")
    for method in ("auto", "euler"):
        traj = om.integrate(student, teacher, eta=50.0, alpha_max=1e4, method=method, max_norm=10)
        assert traj.status == "diverged"
        assert "alpha" in traj.message
        assert np.all(np.isfinite(traj.eps_g)) and np.all(np.isfinite(traj.Q))
        assert traj.alpha[-1] < 1e4


@pytest.mark.parametrize("kwargs,match", [
    (dict(eta=-1.0), "eta"), (dict(eta=float("nan")), "eta"), (dict(eta=1.0), "alpha_max"),
    (dict(eta=1.0, alpha_max=-5), "alpha_max"), (dict(eta=1.0, alpha=[0, 2, 1]), "alpha"),
    (dict(eta=1.0, alpha_max=1, eta_lam=-2), "eta_lam"), (dict(eta=1.0, alpha_max=1, method="nope"), "method"),
    (dict(alpha_max=1), "eta must be given"),
])
def test_bad_arguments(kwargs, match):
    teacher = om.Teacher.modes(30, 3, seed=0)
    student = om.Student.from_teacher_modes(teacher, seed=1)
    with pytest.raises(ValueError, match=match):
        om.integrate(student, teacher, **kwargs)


def test_input_dimension_with_a_given_system():
    """``N=`` with ``system=``, ``state=`` is the N of the finite-N theory (and of the steps), as the
    networks' N is; a bad N is refused by name."""
    teacher, student = om.Teacher.random(300, 2, seed=1), om.Student.full(300, 2, seed=3)
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    alpha = [0.0, 2.0, 5.0]
    given = om.integrate(system=system, state=state, alpha=alpha, fluctuations=True, N=300)
    nets = om.integrate(student, teacher, eta=1.0, alpha=alpha, fluctuations=True)
    np.testing.assert_allclose(given.eps_g_sd, nets.eps_g_sd, rtol=1e-12)
    np.testing.assert_array_equal(given.steps, nets.steps)
    for bad in (0, -3, 2.5, True, "300"):
        with pytest.raises(ValueError, match="N must be an integer"):
            om.integrate(system=system, state=state, alpha=alpha, N=bad)
        with pytest.raises(ValueError, match="N must be an integer"):
            om.integrate(student, teacher, eta=1.0, alpha=alpha, N=bad)
    with pytest.raises(ValueError, match="input dimension"):
        om.integrate(system=system, state=state, alpha=alpha, fluctuations=True)


def test_rates_come_from_a_given_system():
    system = OdeSystem.from_state(dict(Q=np.eye(2), R=np.zeros((2, 2))), T=np.eye(2), eta=0.5)
    traj = om.integrate(state=dict(Q=np.eye(2), R=np.zeros((2, 2))), system=system, alpha=[0.0, 1.0])
    assert traj.params["eta"] == 0.5
    with pytest.raises(ValueError, match="come from system="):
        om.integrate(state=dict(Q=np.eye(2), R=np.zeros((2, 2))), system=system, eta=1.0, alpha=[0.0, 1.0])


def test_bad_models():
    with pytest.raises(ValueError, match="p must be <= N"):
        om.Student.modes(5, 2, 6)
    with pytest.raises(ValueError, match="K"):
        om.Student.full(10, 0)
    with pytest.raises(ValueError, match="train"):
        om.Student.modes(10, 2, 2, train=("xi", "bogus"))
    with pytest.raises(ValueError, match="positive semi-definite"):
        OdeSystem.from_state(dict(Q=np.array([[1.0, 2.0], [2.0, 1.0]]), R=np.zeros((2, 1))), T=np.eye(1))
    with pytest.raises(ValueError, match="R must be"):
        OdeSystem.from_state(dict(Q=np.eye(2), R=np.zeros((3, 1))), T=np.eye(1))
    with pytest.raises(ValueError, match="init"):
        om.Student.full(10, 2, init="huge")


def test_seeds_reproduce_models():
    a, b = om.Teacher.modes(40, 3, seed=5), om.Teacher.modes(40, 3, seed=5)
    np.testing.assert_array_equal(a.B, b.B)
    assert a.Xi.shape == (40, round(np.log(40)))
    np.testing.assert_allclose(om.Teacher.orthonormal(40, 3, seed=1).T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("method", ["auto", "euler"])
def test_divergence_before_the_first_output_gives_an_empty_trajectory(method):
    teacher = om.Teacher.orthonormal(100, 2, seed=0, activation="linear")
    student = om.Student.full(100, 2, seed=1, activation="linear")
    traj = om.integrate(student, teacher, eta=50.0, alpha=[5.0, 10.0], method=method)
    assert traj.status == "diverged" and traj.alpha.size == 0
    assert traj.Q.shape == (0, 2, 2) and traj.eps_g.shape == (0,)
    assert "diverged at alpha" in repr(traj)


def test_trajectory_repr_is_a_summary():
    teacher = om.Teacher.modes(30, 8, seed=0)
    traj = om.integrate(om.Student.from_teacher_modes(teacher, seed=1), teacher, eta=5.0, alpha_max=10.0)
    text = repr(traj)
    assert text.startswith("Trajectory(ode modes, K=8, M=8, 201 points") and "; ok: integrated to alpha = 10" in text
