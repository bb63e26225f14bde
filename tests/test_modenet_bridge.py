"""The bridge to the on-line theory: the mode network's own code, in the on-line model's
parametrisation (one hidden layer, erf, scalar output, batch 1, the rates of theory/conventions.md), follows the
order-parameter ODE and reproduces ``onlinemdl.simulate``."""
import numpy as np
import pytest
from scipy.special import erf

import onlinemdl as om
from onlinemdl.modenet.online import network_from_student, order_parameters, train_online
from onlinemdl.modenet.optim import SGD


def one_step_by_design(student, x, y, eta, eta_lam, eta_A, eta_v):
    """One SGD step written out from theory/conventions.md (one SGD step)."""
    N = student.N
    Xi, lam, A, v = student.Xi.copy(), student.lam.copy(), student.A.copy(), student.v.copy()
    W = (A * lam) @ Xi.T
    h = W @ x / np.sqrt(N)
    yhat = v @ erf(h / np.sqrt(2))
    delta = v * (yhat - y) * np.sqrt(2 / np.pi) * np.exp(-h**2 / 2)  # delta_i = v_i (yhat - y) g'(h_i)
    u = Xi.T @ x / np.sqrt(N)
    dA = delta @ A  # sum_i delta_i A[i, mu]
    return {"Xi": Xi - eta * np.outer(x, lam * dA) / np.sqrt(N),
            "lam": lam - eta_lam / N * dA * u,
            "A": A - eta_A / N * np.outer(delta, lam * u),
            "v": v - eta_v / N * (yhat - y) * erf(h / np.sqrt(2))}


def test_one_network_step_is_the_design_update():
    student = om.Student.modes(N=50, K=3, p=4, seed=1, train=("xi", "lam", "A", "v"))
    net = network_from_student(student)
    np.testing.assert_allclose(net.layers[0].weight(), student.W)
    x = np.random.default_rng(2).standard_normal(50)
    y = 0.3
    eta, rates = 0.7, {"lam": 0.2, "A": 0.5, "v": 0.9}
    _, grads = net.loss_and_grad(x[None, :], np.array([[y]]))
    SGD(eta, lr_scale={k: r / (eta * 50) for k, r in rates.items()}).step(net.params, grads)
    expected = one_step_by_design(student, x, y, eta, rates["lam"], rates["A"], rates["v"])
    for name in ("Xi", "lam", "A"):
        np.testing.assert_allclose(net.params[name], expected[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.params["v"][0], expected["v"], rtol=1e-12)


def test_full_student_network_and_order_parameters():
    teacher = om.Teacher.random(N=40, M=2, seed=0)
    student = om.Student.full(N=40, K=3, seed=1)
    net = network_from_student(student)
    assert net.trainable == ("W",)
    ours, op = order_parameters(net, teacher), student.order_parameters(teacher)
    assert set(ours) == {"Q", "R"}
    np.testing.assert_allclose(ours["Q"], op["Q"])
    np.testing.assert_allclose(ours["R"], op["R"])
    mode_student = om.Student.modes(N=40, K=3, p=4, seed=2)
    ours, op = order_parameters(network_from_student(mode_student), teacher), mode_student.order_parameters(teacher)
    for name in ("Q", "R", "Rm", "S"):
        np.testing.assert_allclose(ours[name], op[name])
    x = np.random.default_rng(3).standard_normal((1, 40))
    h = student.W @ x[0] / np.sqrt(40)
    np.testing.assert_allclose(net.forward(x)[0, 0], student.v @ erf(h / np.sqrt(2)))


def test_train_online_follows_the_ode():
    """Replica mean of the mode network's eps_g(alpha) against the ODE at N = 200 (the ODE is the
    N -> infinity limit; allowed: 4 standard errors plus 5 % for finite N)."""
    teacher = om.Teacher.modes(N=200, M=2, seed=0)
    student = om.Student.from_teacher_modes(teacher, train=("xi",), seed=1)
    grid = np.array([0.0, 1.0, 2.0, 4.0, 8.0])
    sim = train_online(student, teacher, eta=1.0, alpha=grid, replicas=8, seed=0)
    ode = om.integrate(student, teacher, eta=1.0, alpha=grid)
    assert sim.kind == "modenet" and sim.status == "ok" and sim.eps_g.shape == (8, 5)
    assert sim.Q.shape == (8, 5, 2, 2) and sim.A.shape == (8, 5, 2, student.p) and sim.S.shape == (8, 5, student.p, 2)
    np.testing.assert_allclose(sim.Rm[:, 0], np.broadcast_to(student.order_parameters(teacher)["Rm"], (8,) + sim.Rm.shape[2:]))
    mean, sem = sim.mean().eps_g, sim.sem().eps_g
    assert mean[0] == pytest.approx(ode.eps_g[0], rel=1e-10)
    assert np.all(np.abs(mean - ode.eps_g) <= 4 * sem + 0.05 * ode.eps_g), (mean, sem, ode.eps_g)
    assert mean[-1] < 0.2 * mean[0]


@pytest.mark.slow
def test_train_online_reproduces_simulate():
    """The bridge network and ``onlinemdl.simulate`` draw eps_g(alpha) from the same distribution:
    replica means agree within 4 combined standard errors at every alpha of the grid."""
    if not hasattr(om, "simulate"):
        pytest.skip("onlinemdl.simulate is not available yet")
    teacher = om.Teacher.modes(N=100, M=2, seed=0)
    student = om.Student.from_teacher_modes(teacher, train=("xi", "lam"), seed=1)
    grid = np.array([0.0, 1.0, 2.0, 4.0, 8.0])
    kw = dict(eta=1.0, alpha=grid, replicas=16, eta_lam=0.5)
    ours = train_online(student, teacher, seed=0, **kw)
    ref = om.simulate(student, teacher, seed=1, method="explicit", **kw)
    a, b = ours.mean().eps_g, ref.mean().eps_g
    tol = 4 * np.hypot(ours.sem().eps_g, ref.sem().eps_g) + 1e-12
    assert np.all(np.abs(a - b) <= tol), (a, b, tol)


def test_train_online_errors_and_divergence():
    teacher = om.Teacher.modes(N=50, M=2, seed=0)
    student = om.Student.from_teacher_modes(teacher, seed=1)
    with pytest.raises(ValueError, match="eta must be"):
        train_online(student, teacher, eta=0.0, alpha_max=1)
    with pytest.raises(ValueError, match="give alpha_max or alpha"):
        train_online(student, teacher, eta=1.0)
    with pytest.raises(ValueError, match="eta_lam must be"):
        train_online(student, teacher, eta=1.0, alpha_max=1, eta_lam=-1.0)
    with pytest.raises(ValueError, match="share N"):
        train_online(student, om.Teacher.modes(N=60, M=2, seed=0), eta=1.0, alpha_max=1)
    # beyond the stable rate the erf student's weights run away: flagged, NaN from there on
    run = train_online(student, teacher, eta=1e3, alpha=[0.0, 1.0, 2.0], replicas=2, seed=0)
    assert run.status == "diverged" and run.diverged.all() and "2 of 2 replicas diverged" in run.message
    assert np.all(np.isnan(run.eps_g[:, -1])) and np.all(run.alpha_diverged <= 2.0)
    single = train_online(student, teacher, eta=0.5, alpha=[0.0, 0.5], seed=0)
    assert single.eps_g.shape == (2,) and np.all(np.isfinite(single.eps_g))
