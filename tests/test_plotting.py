"""The standard figures build headless (Agg) on ODE and on simulation trajectories."""
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import onlinemdl as om  # noqa: E402
from onlinemdl import (
    analysis as an,  # noqa: E402
    plotting as pl,  # noqa: E402
)


def as_simulation(traj, replicas=4, noise=0.03, seed=0):
    """A hand-made simulation trajectory: the ODE with multiplicative noise on a replica axis."""
    rng = np.random.default_rng(seed)
    noisy = lambda x: None if x is None else x * (1 + noise * rng.standard_normal((replicas,) + x.shape))
    same = lambda x: None if x is None else np.stack([x] * replicas)
    return replace(traj, kind="sgd", eps_g=noisy(traj.eps_g), Q=noisy(traj.Q), R=noisy(traj.R), Rm=noisy(traj.Rm),
                   S=noisy(traj.S), lam=same(traj.lam), A=same(traj.A), v=same(traj.v))


@pytest.fixture(scope="module")
def classic():
    teacher = om.Teacher.orthonormal(200, 3, seed=0)
    student = om.Student.full(200, 3, init="small", seed=1)
    return om.integrate(student, teacher, eta=1.0, alpha_max=5e3, points=120)


@pytest.fixture(scope="module")
def modes():
    teacher = om.Teacher.modes(30, 8, seed=0)
    student = om.Student.from_teacher_modes(teacher, train=("xi",), seed=1)
    return om.integrate(student, teacher, eta=5.0, alpha_max=1e5, points=120), teacher


def check(fig, naxes):
    assert isinstance(fig, Figure)
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == naxes
    fig.canvas.draw()  # renders without error


@pytest.mark.parametrize("sim", [False, True])
def test_plot_eps_g(classic, sim):
    trajs = [classic, as_simulation(classic)] if sim else classic
    fig = pl.plot_eps_g(trajs)
    check(fig, 1)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "alpha" in ax.get_xlabel() and "epsilon_g" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "plateau" in labels and "ODE" in labels
    if sim:
        assert any("s.e.m." in label for label in labels)
        assert ax.collections  # the standard-error band


def test_plot_eps_g_options(classic):
    fig = pl.plot_eps_g([classic], labels=["theory"], plateaus=False)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["theory"]
    fig = pl.plot_eps_g(classic, plateaus=an.find_plateaus(classic))
    assert "plateau" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    with pytest.raises(ValueError, match="labels"):
        pl.plot_eps_g([classic], labels=["a", "b"])
    with pytest.raises(ValueError, match="trajectories"):
        pl.plot_eps_g([])


@pytest.mark.parametrize("sim", [False, True])
def test_plot_overlaps(classic, sim):
    traj = as_simulation(classic) if sim else classic
    fig = pl.plot_overlaps(traj, [10, 500, 3000])
    check(fig, 3)
    assert fig.axes[0].get_ylabel() == "student node $i$"
    with pytest.raises(ValueError, match="alphas"):
        pl.plot_overlaps(traj, [])


@pytest.mark.parametrize("sim", [False, True])
def test_plot_specialization(classic, modes, sim):
    for traj in (classic, modes[0]):
        check(pl.plot_specialization(as_simulation(traj) if sim else traj), 2)


@pytest.mark.parametrize("sim", [False, True])
def test_plot_modes(modes, sim):
    traj, teacher = modes
    fig = pl.plot_modes(as_simulation(traj) if sim else traj, teacher=teacher)
    check(fig, 2)
    assert len(fig.axes[1].get_lines()) >= 3  # one line per direction of P


def test_plot_modes_reduced_form(classic):
    check(pl.plot_modes(classic, P=np.eye(3), plateaus=False), 2)


def test_palette_is_colour_blind_safe():
    assert pl.palette(3) == list(pl.OKABE_ITO[:3])
    many = pl.palette(12)
    assert len(many) == 12 and len({tuple(np.round(to_rgb(c), 6)) for c in many}) == 12


@pytest.mark.parametrize("sim", [False, True])
def test_plot_local_exponent(modes, sim):
    traj, _ = modes
    trajs = [traj, as_simulation(traj)] if sim else traj
    fig = pl.plot_local_exponent(trajs)
    check(fig, 2)
    top, bottom = fig.axes
    assert "exponent" in bottom.get_ylabel() and bottom.get_xscale() == "log"
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert "shoulder" in labels  # the mode setting's stages are shoulders, shaded in their own colour
    if sim:
        assert any("s.e." in t.get_text() for t in bottom.get_legend().get_texts())
    with pytest.raises(ValueError, match="trajectories"):
        pl.plot_local_exponent([])


def test_plot_specialization_replica_mean(classic):
    fig = pl.plot_specialization(as_simulation(classic), replica=None)
    check(fig, 2)
    assert "sudden" in fig.axes[1].get_title()


def test_plot_eps_g_draws_the_predicted_band_of_single_runs():
    teacher, student = om.Teacher.random(50, 2, seed=0), om.Student.full(50, 2, seed=1)
    theory = om.integrate(student, teacher, eta=1.0, alpha=[0, 0.5, 1, 2, 5], fluctuations=True)
    fig = pl.plot_eps_g(theory)
    (band,) = [c for c in fig.axes[0].collections if "predicted" in c.get_label()]
    assert "N = 50" in band.get_label()
    top = band.get_paths()[0].vertices[:, 1].max()
    upper = (theory.eps_g + theory.eps_g_bias + 2 * theory.eps_g_sd)[theory.alpha > 0]  # log axis: alpha > 0
    assert top == pytest.approx(upper.max(), rel=1e-9)
    assert not [c for c in pl.plot_eps_g(theory, bands=False).axes[0].collections if "predicted" in c.get_label()]
