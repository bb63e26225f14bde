"""Finite-N theory (onlinemdl/ode/noise.py, propagation.py, fluctuations.py, escape.py;
theory/finite_size.md): the noise covariance and the finite-N drift against Monte Carlo in field
space; the propagation step against direct integration; the predicted spread and bias of SGD
against the exact finite-N Gram chain."""
from dataclasses import replace

import numpy as np
import pytest
from conftest import dg, g, mc_steps
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import onlinemdl as om
from onlinemdl.ode import OdeSystem, escape as esc, fluctuations as fl, noise as nz, propagation as prop
from onlinemdl.recipes import run_ode


def _gram(rng, n):
    X = rng.standard_normal((n, n + 3)) * rng.uniform(0.5, 1.1, size=(n, 1))
    return X @ X.T / (n + 3)


def full_case(train=("w",), **kw):
    rng = np.random.default_rng(5)
    K, M = 3, 2
    G = _gram(rng, K + M)
    state = dict(Q=G[:K, :K], R=G[:K, K:], v=rng.uniform(0.3, 0.8, K))
    system = OdeSystem.from_state(state, T=G[K:, K:], vt=rng.uniform(0.3, 0.8, M), train=train, eta=1.3,
                                  eta_v=0.7, **kw)
    return system, state


def mode_case(train, **kw):
    rng = np.random.default_rng(6)
    K, M, p = 3, 2, 2
    G = _gram(rng, p + M)
    state = dict(Rm=G[:p, :p], S=G[:p, p:], A=rng.normal(0, 0.8, (K, p)), lam=rng.normal(0, 1.0, p),
                 v=rng.uniform(0.3, 0.8, K))
    system = OdeSystem.from_state(state, T=G[p:, p:], vt=rng.uniform(0.3, 0.8, M), train=train, eta=1.1,
                                  eta_lam=0.5, eta_A=0.4, eta_v=0.6, **kw)
    return system, state


CASES = {
    "full-w": lambda: full_case(),
    "full-w+v-noise-decay": lambda: full_case(("w", "v"), sigma=0.4, weight_decay=0.2),
    "full-batch3-linear": lambda: full_case(batch=3, activation="linear", sigma=0.2),
    "modes-xi": lambda: mode_case(("xi",)),
    "modes-all": lambda: mode_case(("xi", "lam", "A", "v"), sigma=0.3),
    "modes-lam+A-batch2": lambda: mode_case(("lam", "A"), batch=2),
}


def covariance_with_errors(F, chunk=50_000):
    """Sample covariance of the rows of F and the standard error of each entry."""
    Fc = F - F.mean(0)
    s1 = np.zeros((F.shape[1], F.shape[1]))
    s2 = np.zeros_like(s1)
    for i in range(0, len(F), chunk):
        prod = Fc[i:i + chunk, :, None] * Fc[i:i + chunk, None, :]
        s1 += prod.sum(0)
        s2 += (prod**2).sum(0)
    n = len(F)
    mean = s1 / n
    return mean, np.sqrt(np.maximum(s2 / n - mean**2, 0) / n)


def check_noise_covariance(case, n_mc):
    system, state = CASES[case]()
    y = system.pack(state)
    V, mean = nz.noise_covariance(system, y, log2=16, return_mean=True)
    rhs = system.rhs(y)
    np.testing.assert_allclose(mean, rhs, atol=1e-3 * np.abs(rhs).max())  # the cubature reproduces the drift
    V_mc, se = covariance_with_errors(mc_steps(system, state, np.random.default_rng(1), n_mc))
    z = np.abs(V - V_mc) / (se + 1e-12 * np.abs(V).max())
    assert z.max() < 5.0, (case, z.max())
    assert np.allclose(V, V.T)
    assert np.linalg.eigvalsh(V).min() > -1e-10 * np.abs(V).max()
    # the default cubature (2^10 points for the part outside the closed form) is within 2% of the converged one,
    # and so is the whole covariance by the cubature alone
    np.testing.assert_allclose(nz.noise_covariance(system, y), V, atol=2e-2 * np.abs(V).max())
    np.testing.assert_allclose(nz.noise_covariance(system, y, log2=16, split=False), V, atol=2e-3 * np.abs(V).max())


@pytest.mark.parametrize("case", list(CASES))
def test_closed_form_noise_equals_the_cubature_of_the_linear_terms(case):
    """V1 = Cov(F1) of :func:`linear_noise` (Stein and Price on the closed forms) against the cubature
    of the same terms, and its means against the rhs."""
    system, state = CASES[case]()
    y = system.pack(state)
    V1, m1, m2, rest = nz.linear_noise(system, y)
    args = nz._increment_args(system, y)
    L = nz._field_factor(args[1], args[2], system.T)
    noisy = system.sigma > 0
    Z = nz._normal_points(L.shape[1] + noisy, 17)
    F1, F2 = nz._increment_rows(Z, L, noisy, np.zeros((2, y.size)), rest, True, *args)
    np.testing.assert_allclose(F1.mean(0), m1, atol=5e-4 * np.abs(m1).max())
    np.testing.assert_allclose(F2.mean(0), m2[rest], atol=5e-4 * max(np.abs(m2).max(), 1e-12))
    np.testing.assert_allclose(np.cov(F1.T, bias=True), V1, atol=2e-3 * np.abs(V1).max())
    whole = nz._increment_rows(Z[:64], L, noisy, np.zeros((1, y.size)), np.arange(y.size), False, *args)[0]
    F1[:64, rest] += F2[:64]  # the rest is zero outside the entries rest: the two parts add up to the increment
    np.testing.assert_allclose(F1[:64], whole, rtol=1e-12, atol=1e-12 * np.abs(whole).max())


def test_noise_covariance_matches_monte_carlo():
    check_noise_covariance("full-w", 50_000)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_noise_covariance_matches_monte_carlo_all_forms(case):
    check_noise_covariance(case, 400_000)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["full-w+v-noise-decay", "full-batch3-linear", "modes-all"])
def test_finite_n_drift_matches_exact_step(case):
    """f_1 (without the -J f / 2 of the time step) against N^2 E[step] - N rhs of the exact chain,
    by Monte Carlo of its two random terms: dd^T (|z|^2 - r) and, for a batch, d^s d^s'^T z^s.z^s'."""
    system, state = CASES[case]()
    y = system.pack(state)
    f1 = nz.finite_n_drift(system, y, J=np.zeros((y.size, y.size)))
    modes = system.form == "modes"
    G, S = (state["Rm"], state["S"]) if modes else (state["Q"], state["R"])
    r, b = G.shape[0], system.batch
    eta, kap = system.eta, system.weight_decay
    cov = np.block([[G, S], [S.T, system.T]])
    w, U = np.linalg.eigh(cov)
    keep = w > 1e-12
    L = U[:, keep] * np.sqrt(w[keep])
    rank = int(keep.sum())
    C = state["A"] * state["lam"] if modes else np.eye(system.K)
    rng = np.random.default_rng(2)
    n = 1_000_000
    z = rng.standard_normal((n, 2, rank))
    f = z @ L.T
    s, u = f[..., :r], f[..., r:]
    h = s @ C.T
    act = system.activation
    err = g(h, act) @ state["v"] - g(u, act) @ system.vt - system.sigma * rng.standard_normal((n, 2))
    d = (state["v"] * dg(h, act) * err[..., None]) @ C
    samples = (eta**2 / b) * d[:, 0, :, None] * d[:, 0, None, :] * (np.sum(z[:, 0] ** 2, 1) - rank)[:, None, None]
    if b > 1:
        samples = samples + eta**2 * (b - 1) / b * d[:, 0, :, None] * d[:, 1, None, :] * \
            np.sum(z[:, 0] * z[:, 1], 1)[:, None, None]
    X = np.einsum("ca,ce->ae", d[:, 0], s[:, 0]) / n
    exact = samples.mean(0) + eta**2 * kap**2 * G + eta**2 * kap * (X + X.T)
    se = samples.std(0) / np.sqrt(n)
    iu = np.triu_indices(r)
    z_score = np.abs(f1[:iu[0].size] - exact[iu]) / (se[iu] + 1e-9)
    assert z_score.max() < 5.0, (case, z_score.max(), f1[:iu[0].size], exact[iu])
    np.testing.assert_array_equal(f1[iu[0].size:], 0.0)


def test_field_factor_reproduces_a_rank_deficient_field_covariance():
    rng = np.random.default_rng(2)
    B = rng.standard_normal((5, 2))  # a teacher of rank 2 (a mode teacher)
    Wt, Ws = rng.standard_normal((3, 2)), rng.standard_normal((3, 3))
    G, S, T = Wt @ Wt.T + Ws @ Ws.T, Wt @ B.T, B @ B.T
    L = nz._field_factor(G, S, T)
    assert L.shape[1] == 3 + 2
    np.testing.assert_allclose(L @ L.T, np.block([[G, S], [S.T, T]]), atol=1e-10)


def test_noise_covariance_splits_only_where_the_closed_form_dominates():
    """Large weights, K = M = 6 (the cubature's part is 2.4% of V): the closed form plus 2^10 points, within 2%
    of the whole V at 2^16 points (itself about 1% from converged at this size) and within 1% of the split at
    2^16; small weights (the student's fields tiny, the eta^2 terms dominate): the
    whole V by the cubature at 2^13 points, exactly as with split=False."""
    large = om.Student.full(1000, 6, seed=2), om.Teacher.random(1000, 6, seed=1)
    small = om.Student.full(1000, 3, seed=1, init="small", v=np.ones(3)), om.Teacher.orthonormal(1000, 3, seed=0, vt=np.ones(3))
    for (student, teacher), split in ((large, True), (small, False)):
        system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
        y = system.pack(state)
        V = nz.noise_covariance(system, y)
        whole = nz.noise_covariance(system, y, split=False)
        if split:
            assert not np.array_equal(V, whole)
            np.testing.assert_allclose(V, nz.noise_covariance(system, y, log2=16, split=False), atol=2e-2 * np.abs(V).max())
            np.testing.assert_allclose(V, nz.noise_covariance(system, y, log2=16), atol=1e-2 * np.abs(V).max())
        else:
            np.testing.assert_array_equal(V, whole)


def test_directions_factor_singular_and_rounded_covariances():
    """``Sigma = sum_i w_i u_i u_i^T`` with unit ``u_i`` from the Cholesky factor, also for a singular Sigma
    (the jitter makes it definite) and one made slightly indefinite by rounding (the eigenvectors instead)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 3))
    for Sigma in (X @ X.T, X @ X.T - 1e-9 * np.eye(6)):
        w, U = prop.sigma_directions(Sigma, 0.0)
        np.testing.assert_allclose(np.linalg.norm(U, axis=0), 1.0)
        np.testing.assert_allclose((U * w) @ U.T, Sigma, atol=1e-8)
    w, U = prop.sigma_directions(np.zeros((6, 6)), 0.0)
    assert w.size == 0 and U.shape == (6, 0)


CURVATURE_CASES = {**{k: CASES[k] for k in ("full-w", "full-batch3-linear", "modes-xi")},
                   "full-w-noise-decay-batch2": lambda: full_case(sigma=0.4, weight_decay=0.2, batch=2)}


@pytest.mark.parametrize("case", list(CURVATURE_CASES))
def test_rhs_curvature_equals_second_differences(case):
    """H:Sigma of the right-hand side in closed form (eq. B3: the I4 sums of the eta^2 / b term and the I3 terms)
    against Richardson-extrapolated central second differences of the right-hand side along every direction;
    the kernel's D equals field_averages' D, and M y + const are the field covariances."""
    from onlinemdl.ode.derivatives import d_curvature
    from onlinemdl.ode.kernels import field_averages

    system, state = CURVATURE_CASES[case]()
    y = system.pack(state)
    d = y.size
    M, e, ey = prop.field_map(system, d)
    _, _, _, Sig, _, Chf = nz.field_covariances(system, y)
    _, _, _, Sig0, _, Chf0 = nz.field_covariances(system, np.zeros(d))
    Y, Y0 = Chf.T, Chf0.T
    n = Sig.shape[0]
    W = np.zeros(M.shape[0])
    W[e], W[ey] = Sig, Y
    W0 = np.zeros(M.shape[0])
    W0[e], W0[ey] = Sig0, Y0
    np.testing.assert_allclose(M @ y + W0, W, atol=1e-14)  # every entry of Sig and Y where e and ey point
    assert np.array_equal(e, e.T) and e.shape == (n, n) and Y.shape[1] == n
    c = np.concatenate((state["v"], -system.vt))
    D, _ = d_curvature(Sig, np.zeros((M.shape[0],) * 2), e, system.K, c, system.dynamics.sigma, system.act)
    np.testing.assert_allclose(D, field_averages(Sig, system.K, c, system.dynamics.sigma, system.act)[2], rtol=1e-13)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((d, d))
    Sigma = X @ X.T / d
    got = prop.rhs_curvature(system, y, Sigma, fmap=(M, e, ey))
    coarse, fine = (prop.hessian_contraction(system.rhs_many, y, Sigma, rel_step=h, cutoff=0.0) for h in (1e-3, 5e-4))
    want = (4 * fine - coarse) / 3
    scale = max(np.abs(want).max(), np.abs(system.rhs(y)).max())  # the linear activation's H is 0: rounding only
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("case", list(CURVATURE_CASES))
def test_closed_form_moments_equal_differences(case):
    """The sd and the bias of eps_g, Q and R in closed form (field covariance linear in the state) equal the
    central differences along the directions of Sigma and along b."""
    system, state = CURVATURE_CASES[case]()
    y = system.pack(state)
    d = y.size
    rng = np.random.default_rng(2)
    X = rng.standard_normal((2, d, d))
    ys, Sig, bs = np.array([y, 0.97 * y]), 0.1 * X @ X.transpose(0, 2, 1) / d, 0.1 * rng.standard_normal((2, d))
    got = fl.eps_g_moments(system, ys, Sig, bs, 100)
    want = fl._difference_moments(system, ys, Sig, bs, 100, 1e-4)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=0, atol=1e-7 * np.abs(w_).max())


@pytest.mark.parametrize("case", ["full-w+v-noise-decay", "modes-all", "modes-lam+A-batch2"])
def test_rhs_curvature_falls_back_to_differences(case):
    """With trained v, lam or A the field covariance (or c) is not linear in the state: no field map, and
    rhs_curvature is the one-sided differences with the Jacobian."""
    system, state = CASES[case]()
    y = system.pack(state)
    assert prop.field_map(system, y.size) is None
    X = np.random.default_rng(4).standard_normal((y.size, y.size))
    Sigma, J = X @ X.T / y.size, system.jacobian(y)
    np.testing.assert_array_equal(prop.rhs_curvature(system, y, Sigma, J),
                                  prop.hessian_contraction(system.rhs_many, y, Sigma, J))


def test_noise_covariance_is_smooth_in_the_state():
    """Near the symmetric plateau (T = I: the field covariance has degenerate eigenvalues) a change
    of the state by 1e-7 moves V by O(1e-7); a factor from the eigenvectors of the whole covariance
    turned them and moved V by its cubature error (5e-3 here), which Sigma then took up node by node."""
    K = 3
    state = dict(Q=0.01 * np.eye(K) + 0.001, R=np.full((K, K), 0.002), v=np.ones(K))
    system = OdeSystem.from_state(state, T=np.eye(K), vt=np.ones(K), eta=1.0)
    y = system.pack(state)
    V = nz.noise_covariance(system, y)
    rng = np.random.default_rng(0)
    for _ in range(3):
        dV = nz.noise_covariance(system, y + 1e-7 * rng.standard_normal(y.size)) - V
        assert np.abs(dV).max() < 1e-4 * np.abs(V).max()


def _classic_solution(K=2, alpha_max=60.0):
    student, teacher = om.Student.full(1000, K, seed=2), om.Teacher.random(1000, K, seed=1)
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    y0 = system.pack(state)
    sol = solve_ivp(lambda t, y: system.rhs(y), (0, alpha_max), y0, method="LSODA", rtol=1e-9, atol=1e-11,
                    dense_output=True)
    return system, y0, sol.sol


def test_nodes_are_refined_where_the_magnus_term_is_large():
    system, y0, sol = _classic_solution()
    nodes = prop.node_grid(sol, np.linspace(0, 60, 121))
    refined, ys, Js = prop.refine_by_jacobian(system, sol, nodes, 1e-5, y0=y0)
    assert set(nodes) <= set(refined) and refined.size > nodes.size
    np.testing.assert_array_equal(ys[0], y0)
    np.testing.assert_allclose(ys[7], sol(refined[7]))
    np.testing.assert_allclose(Js[7], system.jacobian(ys[7]))
    h = np.diff(refined)
    magnus = [h[k] ** 2 / 12 * np.linalg.norm(Js[k + 1] @ Js[k] - Js[k] @ Js[k + 1]) for k in range(h.size)]
    assert max(magnus) <= 1e-5


@pytest.mark.parametrize("case", ["full", "modes-all"])
def test_default_nodes_agree_with_a_dense_grid(case):
    """The predictions on the default nodes against 4x and more denser ones: a converging K = M = 2 run,
    and a mode student with every factor trained and label noise."""
    if case == "full":
        system, y0, _ = _classic_solution()
    else:
        system, state = CASES[case]()
        y0 = system.pack(state)
    alpha = np.linspace(0, 60, 121)
    P = fl.predict(system, y0, alpha, 1000)
    dense = fl.predict(system, y0, alpha, 1000, per_decade=40, jac_tol=1e-6)
    assert dense["nodes"].size > 3 * P["nodes"].size
    np.testing.assert_allclose(P["eps_g_sd"][1:], dense["eps_g_sd"][1:], rtol=0.02)
    np.testing.assert_allclose(P["Q_sd"][1:], dense["Q_sd"][1:], rtol=0.02)
    np.testing.assert_allclose(P["eps_g_bias"][1:], dense["eps_g_bias"][1:], rtol=0.05,
                               atol=0.02 * np.abs(dense["eps_g_bias"]).max())


def test_propagation_step_matches_direct_integration():
    rng = np.random.default_rng(3)
    d = 5
    J = rng.normal(size=(d, d)) - 2 * np.eye(d)
    X = rng.normal(size=(d, d))
    V = X @ X.T
    S0, b0 = np.eye(d) * 0.3, rng.normal(size=d)
    h = 0.7
    S1, Jh = prop._step(J, J, V, V, h, S0)
    b1 = prop._bias_step(Jh, b0, prop._mean_forcing(J, J, np.ones(d), np.ones(d), h), h)
    sol = solve_ivp(lambda t, x: (J @ x.reshape(d, d) + x.reshape(d, d) @ J.T + V).ravel(), (0, h), S0.ravel(),
                    rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(S1, sol.y[:, -1].reshape(d, d), rtol=1e-7, atol=1e-9)
    sb = solve_ivp(lambda t, x: J @ x + 1.0, (0, h), b0, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b1, sb.y[:, -1], rtol=1e-7, atol=1e-10)


def test_taylor_step_equals_the_van_loan_exponential():
    """The step's Taylor series against scipy's exponentials: ``Phi = e^{hJ}`` and, from Van Loan's block
    ``[[-J, V], [0, J^T]]``, ``Q = Phi E_12``, to rounding (``h ||J||_1 = 1/2``, the largest the step uses)."""
    rng = np.random.default_rng(5)
    d = 30
    J = rng.normal(size=(d, d)) / np.sqrt(d) - np.eye(d)
    X = rng.normal(size=(d, d))
    V = X @ X.T
    h = 0.5 / np.abs(J).sum(axis=0).max()
    Phi, Q = prop._taylor_step(J, V, h, 0)
    E = expm(h * np.block([[-J, V], [np.zeros((d, d)), J.T]]))
    np.testing.assert_allclose(Phi, expm(h * J), rtol=0, atol=1e-14)
    np.testing.assert_allclose(Q, E[d:, d:].T @ E[:d, d:], rtol=0, atol=1e-13 * np.abs(Q).max())


def test_horner_step_equals_the_exponentials():
    """Where ``h ||J||_1 <= 2`` the step sums ``e^{hL} Sigma_0 + int e^{tL} V`` by Horner's scheme, and ``b``'s
    step always does (in sub-steps over longer steps): both equal scipy's exponentials (``Phi Sigma_0 Phi^T + Q``
    from Van Loan's block, and the augmented ``[[J, s], [0, 0]]``) to rounding."""
    rng = np.random.default_rng(6)
    d = 30
    J = rng.normal(size=(d, d)) / np.sqrt(d) - np.eye(d)
    X = rng.normal(size=(d, d))
    V, S0, b0, s_ = X @ X.T, np.eye(d) * 0.3, rng.normal(size=d), rng.normal(size=d)
    for h in np.array([0.05, 1.0, 2.0]) / np.abs(J).sum(axis=0).max():
        S1, _ = prop._step(J, J, V, V, h, S0)
        E = expm(h * np.block([[-J, V], [np.zeros((d, d)), J.T]]))
        Phi = expm(h * J)
        np.testing.assert_allclose(S1, Phi @ S0 @ Phi.T + E[d:, d:].T @ E[:d, d:], rtol=0, atol=1e-13 * np.abs(S1).max())
    for h in (0.05 / np.abs(J).sum(axis=0).max(), 0.5 / np.abs(J).sum(axis=0).max(), 3.0):  # 3.0: sub-steps
        A = expm(h * np.block([[J, s_[:, None]], [np.zeros((1, d + 1))]]))
        np.testing.assert_allclose(prop._bias_step(J, b0, s_, h), A[:d, :d] @ b0 + A[:d, d], rtol=0, atol=1e-13)


def test_propagation_step_is_accurate_over_long_steps():
    """h ||J|| = 40 with a zero mode (as for the linear activation's rotation symmetry): one exponential of
    Van Loan's block would hold e^{40} and lose Sigma in rounding (eigenvalues of -8e6 in a real run)."""
    rng = np.random.default_rng(4)
    d = 5
    P = np.linalg.qr(rng.normal(size=(d, d)))[0]
    J = P @ np.diag([0.0, -0.5, -1.0, -1.5, -2.0]) @ P.T + 0.1 * rng.normal(size=(d, d))
    X = rng.normal(size=(d, d))
    V = X @ X.T
    h, S0, b0, s_ = 20.0, np.eye(d) * 0.3, rng.normal(size=d), rng.normal(size=d)
    S1, Jh = prop._step(J, J, V, V, h, S0)
    b1 = prop._bias_step(Jh, b0, prop._mean_forcing(J, J, s_, s_, h), h)
    x = solve_ivp(lambda t, x: np.concatenate(((J @ x[:d * d].reshape(d, d) + x[:d * d].reshape(d, d) @ J.T + V).ravel(),
                                               J @ x[d * d:] + s_)),
                  (0, h), np.concatenate((S0.ravel(), b0)), method="DOP853", rtol=1e-11, atol=1e-12).y[:, -1]
    np.testing.assert_allclose(S1, x[:d * d].reshape(d, d), rtol=1e-7, atol=1e-8 * np.abs(x).max())
    np.testing.assert_allclose(b1, x[d * d:], rtol=1e-7, atol=1e-8 * np.abs(x).max())
    assert np.linalg.eigvalsh(S1).min() > -1e-10 * np.linalg.eigvalsh(S1).max()


def test_propagation_step_is_fourth_order():
    """With J, V and the bias forcing at the step's Gauss-Legendre points, one step's error is O(h^5)
    for smoothly varying coefficients (an error ratio of 32 per halving of h; the end values' plain
    averages: O(h^3), a ratio of 8)."""
    rng = np.random.default_rng(3)
    d = 5
    J0, Jd, Jdd = rng.normal(size=(d, d)) - 2 * np.eye(d), rng.normal(size=(d, d)), rng.normal(size=(d, d))
    X, Y = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    V0, Vd = X @ X.T, Y @ Y.T
    s0, sd = rng.normal(size=d), rng.normal(size=d)
    S0, b0 = np.eye(d) * 0.3, rng.normal(size=d)
    J = lambda t: J0 + np.sin(t) * Jd + t**2 * Jdd  # noqa: E731
    V = lambda t: V0 + np.cos(3 * t) * Vd  # noqa: E731
    s = lambda t: s0 + np.exp(t) * sd  # noqa: E731

    def error(h):
        def f(t, x):
            S = x[:d * d].reshape(d, d)
            return np.concatenate(((J(t) @ S + S @ J(t).T + V(t)).ravel(), J(t) @ x[d * d:] + s(t)))
        x = solve_ivp(f, (0, h), np.concatenate((S0.ravel(), b0)), method="DOP853", rtol=1e-13, atol=1e-14).y[:, -1]
        t1, t2 = prop._GAUSS * h
        S1, Jh = prop._step(J(t1), J(t2), V(t1), V(t2), h, S0)
        b1 = prop._bias_step(Jh, b0, prop._mean_forcing(J(t1), J(t2), s(t1), s(t2), h), h)
        return np.array([np.abs(S1 - x[:d * d].reshape(d, d)).max(), np.abs(b1 - x[d * d:]).max()])

    e1, e2 = error(0.1), error(0.05)
    assert np.all(e1 < 1e-4), e1
    assert np.all(e1 / e2 > 24), e1 / e2


def test_gauss_weights_and_interpolation_are_exact_for_cubics():
    nodes = np.array([0.0, 0.3, 1.0, 1.1, 2.5, 4.0])
    cubic = lambda t: 1 - 2 * t + 0.5 * t**2 - 0.3 * t**3  # noqa: E731
    for k, weights in enumerate(prop._gauss_weights(nodes)):
        t = nodes[k] + prop._GAUSS * (nodes[k + 1] - nodes[k])
        np.testing.assert_allclose(prop._at(weights, cubic(nodes)), cubic(t), rtol=1e-12, atol=1e-12)
    alpha = np.linspace(0, 4, 33)
    plan = prop.interpolation_plan(nodes, alpha)
    np.testing.assert_allclose(prop.interpolate(plan, cubic(nodes)), cubic(alpha), rtol=1e-12, atol=1e-12)
    grow = np.exp(0.7 * nodes)
    np.testing.assert_allclose(prop.interpolate(plan, grow, geometric=True), np.exp(0.7 * alpha), rtol=1e-12)


def test_variances_interpolated_in_log_log_are_exact_for_power_laws():
    """From a fixed start the variances grow like a power of alpha - alpha_0: a cubic in log-log follows them
    exactly (a cubic in log(value) over alpha does not), and the first output takes the first node's value."""
    nodes = np.array([1.0, 1.5, 2.07, 3.0, 5.5, 9.0, 15.0])
    alpha = np.linspace(1.0, 15.0, 57)
    for power in (1.0, 0.5, 2.3):
        law = lambda t: 0.3 * (t - 1.0) ** power + 0 * t  # noqa: E731
        values = np.stack((law(nodes), 2 * law(nodes)), axis=1)
        got = prop.interpolate_variance(nodes, alpha, values)
        np.testing.assert_allclose(got, np.stack((law(alpha), 2 * law(alpha)), axis=1), rtol=1e-11, atol=1e-14)
    in_alpha = prop.interpolate(prop.interpolation_plan(nodes, alpha), law(nodes), geometric=True)
    assert np.max(np.abs(in_alpha[1:] / law(alpha[1:]) - 1)) > 1e-3


def _relaxing_path(d=3, rate=0.7, seed=11):
    """A dense output ``sol`` of a straight path ``y* + u e^{-rate alpha}`` (values (d, m) at m times)."""
    rng = np.random.default_rng(seed)
    y_star, u = rng.normal(size=d), rng.normal(size=d)
    return lambda a: y_star[:, None] + u[:, None] * np.exp(-rate * np.atleast_1d(np.asarray(a, float)))[None, :]


def test_state_functions_are_interpolated_along_the_path():
    """J and V depend on the state alone. Along a path that relaxes several e-folds a step, a function affine in the
    state is linear in the path's length: its cubic in path_parameter hits it at the Gauss points (to the 1e-6 of
    alpha that keeps the parameter rising), where the cubic in alpha is off by 0.4% of its scale."""
    sol = _relaxing_path()
    A = np.random.default_rng(12).normal(size=(4, 3))
    f = lambda a: (A @ sol(a)).T + 1.0  # noqa: E731  an affine function of the state, (m, 4)
    nodes = np.array([0.0, 1.0, 3.0, 6.0, 10.0, 15.0])
    at_nodes, at_gauss = prop.path_parameter(sol, nodes)
    assert np.all(np.diff(at_nodes) > 0)
    scale, worst = np.abs(f(nodes)).max(), 0.0
    for k in range(nodes.size - 1):
        exact = f(nodes[k] + prop._GAUSS * (nodes[k + 1] - nodes[k]))
        along = prop._at(prop._lagrange(at_nodes, k, at_gauss[k]), f(nodes))
        np.testing.assert_allclose(along, exact, rtol=0, atol=1e-5 * scale)
        in_alpha = prop._at(prop._gauss_weights(nodes)[k], f(nodes))
        worst = max(worst, np.abs(in_alpha - exact).max() / scale)
    assert worst > 1e-3


def test_path_parameter_of_a_standing_state_is_alpha():
    """Where the state never moves the parameter is alpha itself (scaled): the interpolation is the one in alpha."""
    nodes = np.array([0.0, 0.5, 2.0, 3.5, 7.0])
    at_nodes, at_gauss = prop.path_parameter(lambda a: np.ones((2, np.size(a))), nodes)
    scale = at_nodes[-1] / nodes[-1]
    np.testing.assert_allclose(at_nodes / scale, nodes, rtol=1e-12)
    np.testing.assert_allclose(at_gauss / scale, nodes[:-1, None] + prop._GAUSS * np.diff(nodes)[:, None], rtol=1e-12)


def test_predict_refuses_output_times_out_of_order():
    """The interpolation to the outputs takes them in order; unordered times would be mixed up silently."""
    teacher, student = om.Teacher.random(50, 2, seed=0), om.Student.full(50, 2, seed=1)
    system, state = om.OdeSystem.from_networks(student, teacher, eta=1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        fl.predict(system, system.pack(state), [0, 2, 1], 50)


def test_node_grid_keeps_log_spaced_times_away_from_the_outputs():
    """A log-spaced time equal to an output up to rounding (0.49999999999999994 against 0.5) made a near-double
    node, and a cubic through both had weights of order 1e15."""
    nodes = prop.node_grid(lambda a: np.zeros(3), [0, 0.5, 1, 2, 5])
    assert {0.5, 1.0, 2.0, 5.0} <= set(nodes)
    gaps = np.diff(nodes)
    assert gaps.min() > 0.2 * gaps[np.argmin(gaps) + 1]
    assert max(np.abs(W).sum(axis=1).max() for _, W in prop._gauss_weights(nodes)) < 8


def test_propagation_converges_at_fourth_order_over_many_steps():
    """Sigma along varying J(alpha), V(alpha) known at the nodes only: its error falls like h^4 (ratio 16 per
    halving of the node spacing), from the cubics through the nodes at each step's Gauss points."""
    rng = np.random.default_rng(8)
    d = 4
    J0, Jd = rng.normal(size=(d, d)) - 1.5 * np.eye(d), 0.5 * rng.normal(size=(d, d))
    X = rng.normal(size=(d, d))
    V0, Vd = X @ X.T, 0.3 * np.eye(d)
    J = lambda t: J0 + np.sin(t) * Jd  # noqa: E731
    V = lambda t: V0 + np.cos(2 * t) * Vd  # noqa: E731
    x = solve_ivp(lambda t, x: (J(t) @ x.reshape(d, d) + x.reshape(d, d) @ J(t).T + V(t)).ravel(), (0, 4),
                  np.zeros(d * d), method="DOP853", rtol=1e-13, atol=1e-14).y[:, -1].reshape(d, d)

    def error(n):
        nodes = 4 * np.linspace(0, 1, n) ** 1.5  # uneven steps
        Sig, _ = prop.propagate(None, nodes, np.zeros((n, d)), 100, bias=False, noise=[V(t) for t in nodes],
                              jacobians=[J(t) for t in nodes])
        return np.abs(Sig[-1] - x).max() / np.abs(x).max()

    e1, e2 = error(11), error(21)
    assert e1 < 1e-2 and e1 / e2 > 12, (e1, e2)


@pytest.mark.slow
def test_integrate_carries_the_predictions():
    N = 100
    teacher, student = om.Teacher.random(N, 2, seed=0), om.Student.full(N, 2, seed=1)
    alpha = [0, 1, 5]
    traj = om.integrate(student, teacher, eta=1.0, alpha=alpha, fluctuations=True)
    plain = om.integrate(student, teacher, eta=1.0, alpha=alpha)
    np.testing.assert_array_equal(traj.eps_g, plain.eps_g)
    d = 3 + 4
    assert traj.cov.shape == (3, d, d) and traj.bias.shape == (3, d)
    assert traj.Q_sd.shape == (3, 2, 2) and traj.R_sd.shape == (3, 2, 2)
    assert traj.eps_g_sd[0] == 0 and traj.eps_g_bias[0] == 0 and np.all(traj.eps_g_sd[1:] > 0)
    assert traj.fluct_valid_until == np.inf and traj.params["fluctuations"] == "fixed"
    np.testing.assert_allclose(traj.cov, traj.cov.transpose(0, 2, 1), atol=1e-15)
    # the state covariance scales as 1/N
    big = om.integrate(student, teacher, eta=1.0, alpha=alpha, fluctuations=True, N=10 * N)
    np.testing.assert_allclose(big.cov[1:], traj.cov[1:] / 10, rtol=1e-9)
    np.testing.assert_allclose(big.eps_g_sd[1:], traj.eps_g_sd[1:] / np.sqrt(10), rtol=1e-9)
    assert plain.eps_g_sd is None and plain.cov is None
    with pytest.raises(ValueError, match="fluctuations"):
        om.integrate(student, teacher, eta=1.0, alpha=alpha, fluctuations="yes")
    modes_t = om.Teacher.modes(N, 2, seed=0)
    ms = om.Student.from_teacher_modes(modes_t, seed=1)
    with pytest.raises(ValueError, match="reduced"):
        om.integrate(ms, modes_t, eta=1.0, alpha=alpha, fluctuations=True, form="reduced")


def test_integrate_without_the_state_covariance():
    """covariance=False: no state covariance at the outputs (a scan's store would hold n x d x d per point), and
    every other prediction the same to the last bit; the scan recipe passes it on."""
    N = 100
    teacher, student = om.Teacher.random(N, 3, seed=0), om.Student.full(N, 3, seed=1)
    alpha = np.linspace(0, 10, 21)
    full = om.integrate(student, teacher, eta=1.0, alpha=alpha, fluctuations=True)
    lean = om.integrate(student, teacher, eta=1.0, alpha=alpha, fluctuations=True, covariance=False)
    assert full.cov.shape == (21, 15, 15) and lean.cov is None
    for name in ("eps_g_sd", "eps_g_bias", "Q_sd", "R_sd", "bias"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(full, name))
    assert lean.fluct_valid_until == full.fluct_valid_until
    ode = run_ode(N=30, M=2, alpha_max=2.0, points=5, fluctuations="fresh", covariance=False)
    assert ode.cov is None and ode.eps_g_sd.shape == ode.alpha.shape and ode.params["spec"]["covariance"] is False


def test_integrate_predicts_from_alpha_zero_whatever_the_first_output():
    """The runs start at alpha = 0 also when the first output is later, and the theory reuses the
    plain run's LSODA solution: the same numbers as ``predict``'s own solve from 0."""
    N = 100
    teacher, student = om.Teacher.random(N, 2, seed=0), om.Student.full(N, 2, seed=1)
    late = om.integrate(student, teacher, eta=1.0, alpha=[5, 10, 20], fluctuations=True)
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    P = fl.predict(system, system.pack(state), np.array([0.0, 5, 10, 20]), N)
    assert late.eps_g_sd[0] > 0
    np.testing.assert_allclose(late.eps_g_sd, P["eps_g_sd"][1:], rtol=1e-9)
    np.testing.assert_allclose(late.eps_g_bias, P["eps_g_bias"][1:], rtol=1e-6)
    np.testing.assert_allclose(late.cov, P["cov"][1:], rtol=1e-9, atol=1e-15)


def test_fresh_initial_covariance_matches_sampled_networks():
    N, K, M, reps = 80, 2, 2, 1500
    teacher = om.Teacher.random(N, M, seed=0)
    ys = []
    for k in range(reps):
        st = om.Student.full(N, K, seed=100 + k, scale=0.8)
        op = st.order_parameters(teacher)
        ys.append(np.concatenate((op["Q"][np.triu_indices(K)], op["R"].ravel())))
    ys = np.array(ys)
    system, state = OdeSystem.from_networks(om.Student.full(N, K, seed=1, scale=0.8), teacher, eta=1.0)
    Sig = fl.initial_covariance(system, system.pack(state), N, 0.64)
    emp = N * np.cov(ys.T)
    np.testing.assert_allclose(emp, Sig, atol=0.15 * np.abs(Sig).max())
    one = om.Student.full(N, K, seed=1, scale=0.8)
    traj = om.integrate(one, teacher, eta=1.0, alpha=[0, 1], fluctuations="fresh")
    assert traj.params["fluctuations"] == "fresh"
    scale2 = np.trace(one.order_parameters(teacher)["Q"]) / K  # the networks' estimate of scale^2
    np.testing.assert_allclose(traj.cov[0], fl.initial_covariance(system, system.pack(state), N, scale2) / N)
    np.testing.assert_allclose(traj.Q[0], scale2 * np.eye(K))
    np.testing.assert_allclose(traj.R[0], 0.0)
    given = om.integrate(one, teacher, eta=1.0, alpha=[0, 1], fluctuations="fresh", init_variance=0.64)
    np.testing.assert_allclose(given.Q[0], 0.64 * np.eye(K))
    with pytest.raises(ValueError, match="init_variance"):
        om.integrate(one, teacher, eta=1.0, alpha=[0, 1], fluctuations=True, init_variance=0.64)
    with pytest.raises(ValueError, match="init_variance"):
        om.integrate(one, teacher, eta=1.0, alpha=[0, 1], fluctuations="fresh", init_variance=-1.0)


def test_fresh_xi_that_is_not_trained_matches_the_gram_chain():
    """Fresh Xi makes Rm and S random also when Xi is not trained (only lam, A): 1000 runs, each from
    its own Xi, against the "fresh" prediction with the initializer's variance; the spread (nonzero
    from the start) within 10%, the bias-corrected mean within 3 standard errors."""
    N, runs = 200, 1000
    alpha = np.array([0.0, 1, 2, 5, 10])
    teacher = om.Teacher.modes(N, 2, p=2, seed=0)
    student = om.Student.modes(N, 2, 2, seed=1, train=("lam", "A"))
    scale2 = om.model.mode_scale(N) ** 2
    theory = om.integrate(student, teacher, eta=1.0, alpha=alpha, fluctuations="fresh", init_variance=scale2)
    assert theory.fluct_valid_until == np.inf and theory.eps_g_sd[0] > 0
    e = np.array([np.atleast_2d(om.simulate(om.Student(A=student.A, lam=student.lam, train=("lam", "A"),
                                                       Xi=np.sqrt(scale2) * np.random.default_rng(1000 + i)
                                                       .standard_normal((N, 2))),
                                            teacher, eta=1.0, alpha=alpha, replicas=1, seed=i).eps_g)[0]
                  for i in range(runs)])
    sd = e.std(0, ddof=1)
    assert np.max(np.abs(sd / theory.eps_g_sd - 1)) < 0.1, sd / theory.eps_g_sd
    z = (e.mean(0) - theory.eps_g - theory.eps_g_bias) / (sd / np.sqrt(runs))
    assert np.max(np.abs(z)) < 3, z


@pytest.mark.slow
def test_fresh_initial_weights_match_the_gram_chain():
    """1000 runs, each from its own freshly drawn student (N = 1000, K = M = 2): the spread of eps_g
    within 10% and the mean gap within 3 standard errors of the "fresh" prediction with the
    initializer's variance."""
    N, K, runs = 1000, 2, 1000
    alpha = np.array([0, 0.5, 1, 2, 5, 10, 20])
    teacher = om.Teacher.random(N, K, seed=0)
    theory = om.integrate(om.Student.full(N, K, seed=1), teacher, eta=1.0, alpha=alpha, fluctuations="fresh",
                          init_variance=1.0)
    assert theory.fluct_valid_until == np.inf
    e = np.array([np.atleast_2d(om.simulate(om.Student.full(N, K, seed=1000 + i), teacher, eta=1.0, alpha=alpha,
                                            replicas=1, seed=i).eps_g)[0] for i in range(runs)])
    sd = e.std(0, ddof=1)
    assert np.max(np.abs(sd / theory.eps_g_sd - 1)) < 0.1, sd / theory.eps_g_sd
    z = (e.mean(0) - theory.eps_g - theory.eps_g_bias) / (sd / np.sqrt(runs))
    assert np.max(np.abs(z)) < 3, z


# --------------------------------------------------------------------------------------
# Against the exact finite-N chain
# --------------------------------------------------------------------------------------
def compare(student, teacher, eta, alpha, replicas, seed):
    """Predicted sd of eps_g, Q, R within 10% of the measured ones at every valid output time after
    the start; predicted bias of eps_g within 3 standard errors of the measured gap."""
    traj = om.integrate(student, teacher, eta=eta, alpha=alpha, fluctuations=True)
    sim = om.simulate(student, teacher, eta=eta, alpha=traj.alpha, replicas=replicas, seed=seed, threads=2)
    assert sim.status == "ok"
    check = om.analysis.check_fluctuations(traj, sim)
    assert check.alpha.size >= 3
    assert check.worst_sd < 0.1, check.summary()
    assert np.max(np.abs(check.z)) < 3, check.summary()
    return check


def test_check_fluctuations_compares_like_with_like():
    N = 50
    teacher, student = om.Teacher.random(N, 2, seed=0), om.Student.full(N, 2, seed=1)
    alpha = [0, 0.5, 1, 2]
    theory = om.integrate(student, teacher, eta=1.0, alpha=alpha, fluctuations=True)
    sim = om.simulate(student, teacher, eta=1.0, alpha=alpha, replicas=40, seed=0)
    check = om.analysis.check_fluctuations(theory, sim)
    np.testing.assert_array_equal(check.alpha, [0.5, 1, 2])
    assert check.replicas == 40 and check.sd_ratio["Q"].shape == (3, 2, 2)
    np.testing.assert_allclose(check.sd_ratio["eps_g"], sim.eps_g[:, 1:].std(0, ddof=1) / theory.eps_g_sd[1:])
    np.testing.assert_allclose(check.z * check.se, sim.eps_g[:, 1:].mean(0) - theory.eps_g[1:] - theory.eps_g_bias[1:])
    assert "40 replicas" in check.summary()
    with pytest.raises(ValueError, match="fluctuations=True"):
        om.analysis.check_fluctuations(om.integrate(student, teacher, eta=1.0, alpha=alpha), sim)
    with pytest.raises(ValueError, match="2 replicas"):
        om.analysis.check_fluctuations(theory, om.simulate(student, teacher, eta=1.0, alpha=alpha, replicas=1))
    with pytest.raises(ValueError, match="same output times"):
        om.analysis.check_fluctuations(theory, om.simulate(student, teacher, eta=1.0, alpha=[0, 1, 2, 3], replicas=4))
    with pytest.raises(ValueError, match="holds nowhere"):
        om.analysis.check_fluctuations(replace(theory, fluct_valid_until=0.2), sim)


def test_validity_ends_where_the_bias_outgrows_the_spread():
    N, d = 10_000, 3
    Sigma = np.zeros((4, d, d))
    Sigma[:, 0, 0], Sigma[:, 1, 1] = 1.0, 4.0  # entry 2 does not fluctuate: its bias is not compared
    b = np.zeros((4, d))
    b[:, 0] = np.array([0.1, 0.19, 0.21, 0.5]) * np.sqrt(N)  # |b_0| / sqrt(N Sigma_00)
    b[:, 2] = 5.0
    T = np.eye(2)
    np.testing.assert_array_equal(fl.validity(None, Sigma, N, T), [True] * 4)
    np.testing.assert_array_equal(fl.validity(None, Sigma, N, T, b=b), [True, True, False, False])
    np.testing.assert_array_equal(fl.validity(None, Sigma * 2.0, N, T, b=b, bias_tol=0.3), [True, True, True, False])
    np.testing.assert_array_equal(fl.validity(None, Sigma * 400, N, T, b=b * 20), [False] * 4)  # sd 0.2 and 0.4 > 0.1


@pytest.mark.slow
def test_spread_of_the_classic_committee_matches_the_gram_chain():
    N = 100
    teacher, student = om.Teacher.random(N, 2, seed=0), om.Student.full(N, 2, seed=1)
    compare(student, teacher, 1.0, [0, 0.5, 1, 2, 5, 10, 20], 1000, 1)


@pytest.mark.slow
def test_bias_at_large_eta_matches_the_gram_chain():
    """At eta = 4, N = 50 the SGD mean sits many standard errors off the ODE; the predicted bias
    accounts for it."""
    N = 50
    teacher, student = om.Teacher.random(N, 2, seed=0), om.Student.full(N, 2, seed=1)
    check = compare(student, teacher, 4.0, [0, 2, 5, 10, 20], 2500, 2)
    assert np.max(np.abs(check.gap) / check.se) > 6  # the bias is measurable here
    assert np.max(np.abs(check.z)) < 3


@pytest.mark.slow
def test_noise_decay_batch_and_second_layer():
    N = 50
    teacher = om.Teacher.random(N, 2, seed=0, sigma=0.3)
    student = om.Student.full(N, 2, seed=1, weight_decay=0.1, batch=2, train=("w", "v"))
    compare(student, teacher, 1.5, [0, 0.5, 1, 2, 5, 10], 1500, 3)


@pytest.mark.slow
def test_published_mode_setting_at_n30():
    """The paper's on-line setting (M = K = 8, p = 3, only Xi trained, eta = 5) at N = 30."""
    N, P = 30, 3
    scale = om.model.mode_scale(N)
    rng = np.random.default_rng(0)
    A, lam = scale * rng.standard_normal((8, P)), scale * rng.standard_normal(P)
    Xi_t = scale * rng.standard_normal((N, P))
    teacher = om.Teacher((A * lam) @ Xi_t.T, A=A, lam=lam, Xi=Xi_t)
    student = om.Student(A=A.copy(), lam=lam.copy(), Xi=scale * rng.standard_normal((N, P)), train=("xi",),
                         v=teacher.vt.copy())
    compare(student, teacher, 5.0, [0, 0.5, 1, 2, 5], 1000, 4)


@pytest.mark.slow
@pytest.mark.parametrize("K", [2, 3])
def test_escape_time_from_the_symmetric_plateau(K):
    """K = M (v = vt = 1, orthonormal teacher), small initial weights, N = 100: the predicted mean
    plateau length within 3 standard errors (of measurement and prediction together) and its spread
    within 15% of the Gram chain's (500 runs). For K = 3 the unstable eigenspace is 4-dimensional."""
    N = 100
    teacher = om.Teacher.orthonormal(N, K, seed=0, vt=np.ones(K))
    student = om.Student.full(N, K, seed=1, init="small", v=np.ones(K))
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    pred = esc.escape_distribution(system, system.pack(state), N)
    assert pred["multiplicity"] == (1 if K == 2 else 4) and pred["mu"] > 0
    sim = om.simulate(student, teacher, eta=1.0, alpha=np.linspace(0, 150, 1201), replicas=500, seed=K * N)
    meas = esc.escape_times(sim.alpha, sim.eps_g, pred["level_eps"], pred["window"])
    assert np.isfinite(meas).mean() > 0.99 and np.all(np.isfinite(pred["samples"]))
    se = np.hypot(np.nanstd(meas) / np.sqrt(np.isfinite(meas).sum()), pred["sd"] / np.sqrt(pred["samples"].size))
    assert abs(pred["mean"] - np.nanmean(meas)) < 3 * se, (pred["mean"], np.nanmean(meas), se)
    assert abs(pred["sd"] / np.nanstd(meas) - 1) < 0.15, (pred["sd"], np.nanstd(meas))


@pytest.mark.slow
def test_escape_from_an_exactly_symmetric_start():
    """Q = 0.01 I, R = 0 exactly (K = M = 2, N = 1000): the ODE stays on the saddle, only the SGD noise
    breaks the symmetry; the predicted plateau length against 300 Gram-chain runs."""
    N, K = 1000, 2
    teacher = om.Teacher.orthonormal(N, K, seed=0, vt=np.ones(K))
    X = np.vstack([teacher.B, np.random.default_rng(5).standard_normal((K, N))])
    W = np.linalg.qr(X.T)[0][:, K:].T * np.sqrt(0.01 * N)  # orthogonal to the teacher, |w|^2 / N = 0.01
    student = om.Student(W=W, v=np.ones(K))
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    np.testing.assert_allclose(state["R"], 0.0, atol=1e-12)
    pred = esc.escape_distribution(system, system.pack(state), N)
    assert pred["ode"] > 5 * pred["mean"]  # the ODE itself leaves only when rounding errors have grown
    sim = om.simulate(student, teacher, eta=1.0, alpha=np.linspace(0, 260, 1301), replicas=300, seed=9)
    meas = esc.escape_times(sim.alpha, sim.eps_g, pred["level_eps"], pred["window"])
    assert np.all(np.isfinite(meas))
    se = np.hypot(meas.std() / np.sqrt(meas.size), pred["sd"] / np.sqrt(pred["samples"].size))
    assert abs(pred["mean"] - meas.mean()) < 3 * se, (pred["mean"], meas.mean(), se)
    assert abs(pred["sd"] / meas.std() - 1) < 0.15, (pred["sd"], meas.std())


def test_escape_distribution_refuses_bad_arguments():
    state = dict(Q=0.01 * np.eye(2), R=np.zeros((2, 2)))
    system = OdeSystem.from_state(state, T=np.eye(2), vt=np.ones(2), eta=1.0)
    y = system.pack(state)
    for kw, name in ((dict(N=0), "N"), (dict(samples=1), "samples"), (dict(level=1.5), "level"),
                     (dict(window=-1.0), "window"), (dict(seed=-1), "seed")):
        with pytest.raises(ValueError, match=name):
            esc.escape_distribution(system, y, **{"N": 100, **kw})


def test_escape_times_average_out_fast_fluctuations():
    alpha = np.linspace(0, 10, 101)
    wiggle = 0.3 * (-1.0) ** np.arange(alpha.size)  # dips below 0.5 at every other point from alpha = 2.1
    eps = np.vstack([1 - alpha / 10 + wiggle, 1 - alpha / 10])
    np.testing.assert_allclose(esc.first_below(alpha, eps, 0.5), [2.1, 5.1])
    np.testing.assert_allclose(esc.escape_times(alpha, eps, 0.5, window=2.0), [5.0, 5.0], atol=0.15)
    assert np.isnan(esc.escape_times(alpha, eps + 1, 0.5, window=2.0)).all()
    with pytest.raises(ValueError, match="evenly spaced"):
        esc.escape_times(alpha ** 2, eps, 0.5, window=2.0)
