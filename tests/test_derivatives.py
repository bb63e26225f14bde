"""The closed-form derivatives of the right-hand sides (onlinemdl/ode/derivatives.py) against finite
differences: the averages' gradients with respect to the field covariance and the coefficients,
and the Jacobian of every form with every trained subset, noise, decay and batch."""
import numpy as np
import pytest

import onlinemdl as om
from onlinemdl.gaussian import ERF, LINEAR
from onlinemdl.ode import OdeSystem, finite_difference_jacobian
from onlinemdl.ode.derivatives import field_average_derivatives
from onlinemdl.ode.kernels import field_averages


def _covariance(n, rng, scale=0.7):
    X = rng.standard_normal((n, n + 2))
    return scale * X @ X.T / n


@pytest.mark.parametrize("act", [ERF, LINEAR])
@pytest.mark.parametrize("K, M", [(1, 1), (2, 3), (3, 2)])
def test_average_derivatives_match_finite_differences(act, K, M):
    rng = np.random.default_rng(K + 10 * M)
    n = K + M
    Sig, c, sigma = _covariance(n, rng), rng.standard_normal(n), 0.4
    parts = field_average_derivatives(Sig, K, c, sigma, act)
    for got, want in zip(parts[:4], field_averages(Sig, K, c, sigma, act)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    # random directions of Sig (symmetric) and c, against central differences of the averages
    m = 4
    dSig = rng.standard_normal((m, n, n))
    dSig = dSig + dSig.transpose(0, 2, 1)
    dc = rng.standard_normal((m, n))
    Phi, psi, D, Ig, phi0, dphi0, gD, Dc, gIg, I2m = parts
    diag = 1 + np.diag(Sig)
    jvp = []
    for dS_, dc_ in zip(dSig, dc):  # the chain rule of the docstring, direction by direction
        dl3 = diag[None, :] * np.diag(dS_)[:K, None] + diag[:K, None] * np.diag(dS_)[None, :] - 2 * Sig[:K] * dS_[:K]
        dPhi = np.outer(c[:K], c) * dphi0 * dl3 + (np.outer(dc_[:K], c) + np.outer(c[:K], dc_)) * phi0
        dpsi = (np.sum(dPhi * Sig[:K] + Phi * dS_[:K], axis=1) - psi * np.diag(dS_)[:K]) / diag[:K]
        jvp.append((dPhi, dpsi if act == ERF else 0 * dpsi, np.einsum("abpq,pq->ab", gD, dS_) + Dc @ dc_,
                    np.einsum("ipq,pq->i", gIg, dS_) + I2m @ dc_))
    h = 1e-5
    for j in range(m):
        plus = field_averages(Sig + h * dSig[j], K, c + h * dc[j], sigma, act)
        minus = field_averages(Sig - h * dSig[j], K, c - h * dc[j], sigma, act)
        for got, p, q in zip(jvp[j], plus, minus):
            want = (p - q) / (2 * h)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8 * max(1.0, np.abs(want).max()))


def test_gradient_of_D_is_symmetric_and_exact_on_the_diagonal():
    """``gD`` is a gradient with respect to a symmetric matrix: symmetric, and a change of one
    diagonal entry moves ``D`` by ``gD_pp``."""
    rng = np.random.default_rng(3)
    Sig, c = _covariance(5, rng), rng.standard_normal(5)
    gD = field_average_derivatives(Sig, 3, c, 0.0, ERF)[6]
    np.testing.assert_allclose(gD, gD.transpose(0, 1, 3, 2), atol=1e-14)
    E = np.zeros((5, 5))
    E[4, 4] = 1e-6
    D0, D1 = field_averages(Sig - E, 3, c, 0.0, ERF)[2], field_averages(Sig + E, 3, c, 0.0, ERF)[2]
    np.testing.assert_allclose(gD[:, :, 4, 4], (D1 - D0) / 2e-6, rtol=1e-6)


def _systems(act):
    N = 200
    teacher = om.Teacher.random(N, 3, seed=1, activation=act, sigma=0.3)
    for train in (("w",), ("w", "v"), ("v",)):
        student = om.Student.full(N, 4, seed=2, activation=act, train=train, weight_decay=0.1, batch=3)
        yield OdeSystem.from_networks(student, teacher, eta=1.3, eta_v=0.7)
    for train in (("xi",), ("xi", "lam"), ("xi", "A"), ("lam", "A", "v"), ("xi", "lam", "A", "v"), ("A",)):
        student = om.Student.modes(N, 4, p=2, seed=3, activation=act, train=train, weight_decay=0.05, batch=2)
        yield OdeSystem.from_networks(student, teacher, eta=0.8, eta_lam=0.5, eta_A=0.3, eta_v=0.2)
    student = om.Student.modes(N, 4, p=2, seed=3, activation=act, train=("xi",))
    yield OdeSystem.from_networks(student, teacher, eta=0.8, form="reduced")


@pytest.mark.parametrize("act", ["erf", "linear"])
def test_jacobian_matches_finite_differences_for_every_form(act):
    for system, state in _systems(act):
        y = system.pack(state)
        exact = system.jacobian(y)
        fd = finite_difference_jacobian(system.rhs_many, y, order=4, vectorized=True)
        assert exact.shape == (y.size, y.size)
        scale = max(1.0, np.abs(fd).max())
        assert np.abs(exact - fd).max() < 1e-9 * scale, (system.form, system.train)


def test_jacobian_near_a_plateau_and_at_the_teacher():
    """Symmetric, nearly degenerate states (the plateau) and perfect alignment (every arcsin's
    argument near its end) keep the closed form finite and equal to finite differences."""
    T = np.eye(3)
    plateau = {"Q": 0.3 * np.ones((3, 3)) + 0.2 * np.eye(3), "R": 0.25 * np.ones((3, 3)) + 1e-6 * np.eye(3)}
    aligned = {"Q": T.copy(), "R": T.copy()}
    for state in (plateau, aligned):
        system = OdeSystem.from_state(state, T=T, train=("w", "v"), eta=1.0, sigma=0.1)
        y = system.pack(dict(state, v=np.full(3, 1 / 3)))
        exact = system.jacobian(y)
        fd = finite_difference_jacobian(system.rhs_many, y, order=4, vectorized=True)
        assert np.all(np.isfinite(exact))
        assert np.abs(exact - fd).max() < 1e-8 * max(1.0, np.abs(fd).max())
