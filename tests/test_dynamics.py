"""The one description of the dynamics: validated once, packed once, read by every engine."""
from dataclasses import FrozenInstanceError, fields

import numpy as np
import pytest

import onlinemdl as om
from onlinemdl import dynamics as dy
from onlinemdl.modenet import train_online


def test_defaults_validation_and_packing():
    d = om.Dynamics(train=("lam", "xi"), eta=2.0, eta_A=0.5, sigma=0.1, weight_decay=0.2, batch=4)
    assert d.train == ("xi", "lam") and d.eta_lam == 2.0 and d.eta_v == 2.0 and d.eta_A == 0.5
    rates, flags = d.pack()
    assert rates.dtype == np.float64 and flags.dtype == np.int64
    assert rates[dy.ETA] == 2.0 and rates[dy.ETA_A] == 0.5 and rates[dy.SIGMA] == 0.1
    assert rates[dy.DECAY] == 0.2 and rates[dy.INV_BATCH] == 0.25
    assert list(flags[[dy.TRAIN_N, dy.TRAIN_LAM, dy.TRAIN_A, dy.TRAIN_V]]) == [1, 1, 0, 0]
    assert flags[dy.BATCH] == 4 and flags[dy.ACT] == 0
    with pytest.raises(FrozenInstanceError):
        d.eta = 3.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(train=(), eta=1.0), "train must name at least one factor"),
    (dict(train=("w", "xi"), eta=1.0), "mixes"),
    (dict(train=("w", "w"), eta=1.0), "distinct"),
    (dict(train=("q",), eta=1.0), "train must be distinct names"),
    (dict(train=("w",), eta=None), "eta must be given"),
    (dict(train=("w",), eta=0.0), "eta must be a finite number > 0"),
    (dict(train=("w",), eta="5"), "eta must be a finite number"),
    (dict(train=("w",), eta=1.0, eta_v=-1.0), "eta_v must be"),
    (dict(train=("w",), eta=1.0, sigma=float("nan")), "sigma must be"),
    (dict(train=("w",), eta=1.0, batch=0), "batch must be an integer >= 1"),
    (dict(train=("w",), eta=1.0, batch=2.5), "batch must be an integer"),
    (dict(train=("w",), eta=1.0, activation="relu"), "activation must be one of"),
    (dict(train=("w",), eta=1.0, max_norm=0.0), "max_norm must be"),
])
def test_bad_descriptions_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        om.Dynamics(**kwargs)


def test_every_engine_records_the_same_keys():
    """ODE, SGD and the mode network's on-line bridge record the description under the same keys."""
    teacher = om.Teacher.modes(40, 2, seed=0)
    student = om.Student.from_teacher_modes(teacher, train=("xi", "lam"), seed=1)
    runs = [om.integrate(student, teacher, eta=1.0, alpha_max=1.0),
            om.simulate(student, teacher, eta=1.0, alpha_max=1.0, replicas=2),
            train_online(student, teacher, eta=1.0, alpha_max=1.0, replicas=2)]
    common = {f.name for f in fields(om.Dynamics)} | {"N", "K", "M", "p", "form", "method", "vt", "T"}
    for run in runs:
        assert common <= set(run.params), (run.kind, common - set(run.params))
        assert run.params["train"] == ["xi", "lam"] and run.params["eta_lam"] == 1.0
    assert {r.params["method"] for r in runs} == {"auto", "gram", "modenet"}


def test_options_expose_every_description_field_but_train():
    assert set(dy.OPTIONS) == {f.name for f in fields(om.Dynamics)} - {"train"}
    assert all(text for _, text in dy.OPTIONS.values())


def test_ode_system_is_immutable_and_counts_nothing():
    teacher = om.Teacher.orthonormal(50, 2, seed=0)
    system, state = om.OdeSystem.from_networks(om.Student.full(50, 2, seed=1), teacher, eta=0.5)
    with pytest.raises(FrozenInstanceError):
        system.form = "modes"
    assert system.eta == 0.5 and system.train == ("w",)
    a = om.integrate(state=state, system=system, alpha_max=10.0)
    b = om.integrate(state=state, system=system, alpha_max=10.0)
    assert a.nfev == b.nfev > 0  # the count is integrate's own, not kept on the system


def test_scalar_second_layer_is_broadcast():
    """theory/conventions.md §4: a scalar v (or vt) is broadcast; v = 1 gives Saad & Solla's committee."""
    teacher = om.Teacher.orthonormal(20, 3, seed=0, vt=1.0)
    student = om.Student.full(20, 2, seed=1, v=1.0)
    assert teacher.vt.tolist() == [1.0, 1.0, 1.0] and student.v.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="vt must be a finite scalar or a vector of length 3"):
        om.Teacher.orthonormal(20, 3, seed=0, vt=[1.0, 2.0])
