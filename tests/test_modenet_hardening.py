"""modenet against bad input: outputs checked before work, nothing left behind on error, corrupt
files named, divergence reported with where, shape and label errors naming the parameter, help
text for every option, file modes, early stopping."""
import argparse
import os
import re
import stat

import numpy as np
import pytest

from onlinemdl.modenet import Network, digits, fit, io
from onlinemdl.modenet.cli import add_subparser


def parser():
    p = argparse.ArgumentParser(prog="onlinemdl")
    add_subparser(p.add_subparsers(dest="command", required=True))
    return p


def run_cli(*argv):
    args = parser().parse_args(["modenet", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def data():
    return digits(seed=0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("model") / "m.h5"
    net = Network.build([64, 16, 10], kind="modes", p=4, seed=0)
    io.save(path, net, fit(net, data.X_train, data.y_train, epochs=1))
    return path


@pytest.mark.parametrize("out", ["{tmp}/out.h5/", "{tmp}/adir.h5", "", "{tmp}/nothere/m.h5", "{tmp}/m.txt"])
def test_train_refuses_bad_outputs_before_work_and_writes_nothing(tmp_path, capsys, out):
    (tmp_path / "adir.h5").mkdir()
    (tmp_path / "out.h5").mkdir()
    before = sorted(os.listdir(tmp_path))
    assert run_cli("train", "--epochs", 1, "--quiet", "--out", out.replace("{tmp}", str(tmp_path))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onlinemdl modenet train: error:") and "\n" not in err
    assert sorted(os.listdir(tmp_path)) == before  # no figure, no temporary file
    assert all(os.listdir(tmp_path / d) == [] for d in ("adir.h5", "out.h5"))


def test_train_refuses_a_figure_path_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "m_history.png").mkdir()
    assert run_cli("train", "--epochs", 1, "--quiet", "--out", tmp_path / "m.h5") == 2
    assert "m_history.png" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["m_history.png"]


@pytest.mark.parametrize("argv, message", [
    (["--epochs", 0], "--epochs must be >= 1"),
    (["--batch", 0], "--batch must be >= 1"),
    (["--validation", 0.7], "--validation must be a fraction"),
    (["--patience", 2], "--patience needs held-out data"),
])
def test_train_checks_numbers_before_work(tmp_path, capsys, argv, message):
    assert run_cli("train", *argv, "--quiet", "--out", tmp_path / "m.h5") == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_outputs_have_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        assert run_cli("train", "--hidden", 8, "--p", 2, "--epochs", 1, "--quiet", "--out", tmp_path / "m.h5") == 0
    finally:
        os.umask(old)
    for name in ("m.h5", "m_history.png"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


@pytest.mark.parametrize("damage", ["truncated", "text", "folder", "foreign"])
def test_corrupt_model_files_are_named(tmp_path, model_file, capsys, damage):
    bad = tmp_path / "bad.h5"
    if damage == "truncated":
        bad.write_bytes(model_file.read_bytes()[:3000])
    elif damage == "text":
        bad.write_text("not a model\n")
    elif damage == "folder":
        bad.mkdir()
    else:
        import h5py
        with h5py.File(bad, "w") as f:
            f["x"] = 1
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        io.load(bad)
    assert str(bad) in str(err.value)
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli("analyse", bad, "--out", out) == 2
    msg = capsys.readouterr().err.strip()
    assert str(bad) in msg and "\n" not in msg and "Traceback" not in msg
    assert os.listdir(out) == []


def test_divergence_is_reported_with_where_and_no_nan_is_handed_back(data, tmp_path, capsys):
    net = Network.build([64, 32, 10], kind="modes", p=4, seed=0)
    h = fit(net, data.X_train, data.y_train, epochs=3, optimizer="sgd", lr=1e6, X_test=data.X_test,
            y_test=data.y_test)
    assert h.status == "diverged" and h.diverged_at == 0 and "diverged at epoch 0" in h.message
    assert h.best_epoch == -1 and len(h.loss) == 0
    assert all(np.all(np.isfinite(v)) for v in net.params.values())  # the initial parameters, kept
    assert run_cli("train", "--optimizer", "sgd", "--lr", 1e6, "--epochs", 3, "--quiet", "--out", tmp_path / "m.h5") == 0
    out = capsys.readouterr().out
    assert "(diverged: diverged at epoch" in out and "nan" not in out.lower()
    _, hist, _ = io.load(tmp_path / "m.h5")
    assert hist.status == "diverged" and hist.diverged_at == 0


def test_divergence_after_good_epochs_keeps_the_last_good_parameters(data):
    net = Network.build([64, 32, 10], kind="dense", seed=0)
    lrs = iter([1.0, 1.0, 1e7, 1e7])
    h = fit(net, data.X_train, data.y_train, epochs=4, optimizer="sgd", lr=0.05, schedule=lambda e: next(lrs))
    assert h.status == "diverged" and h.diverged_at == 2 and h.best_epoch == 1 and len(h.loss) == 2
    assert np.all(np.isfinite(h.loss)) and np.all(np.isfinite(h.train_acc))
    assert net.accuracy(data.X_train, data.y_train) == h.train_acc[1]


@pytest.mark.parametrize("call, match", [
    (lambda n, d: fit(n, d.X_train[:, :63], d.y_train), "X has 63 features per sample, the network takes 64"),
    (lambda n, d: fit(n, d.X_train[0], d.y_train[:1]), "X must be a 2-d array"),
    (lambda n, d: fit(n, d.X_train, d.y_train + 1), r"y must hold class labels in \[0, 9\]"),
    (lambda n, d: fit(n, d.X_train, d.y_train - 1), r"y must hold class labels in \[0, 9\]"),
    (lambda n, d: fit(n, d.X_train, d.y_train[:-1]), "X and y must have the same number of samples"),
    (lambda n, d: fit(n, d.X_train, d.y_train.reshape(-1, 1)), "y must be a 1-d array of integer class labels"),
    (lambda n, d: fit(n, d.X_train * np.nan, d.y_train), "X holds non-finite values"),
    (lambda n, d: fit(n, d.X_train, d.y_train, X_test=d.X_test[:, :5], y_test=d.y_test), "X_test has 5 features"),
    (lambda n, d: fit(n, d.X_train, d.y_train, validation=(d.X_test, d.y_test + 10)), "y_val must hold class labels"),
    (lambda n, d: fit(n, d.X_train, d.y_train, patience=2), "patience needs validation"),
    (lambda n, d: fit(n, d.X_train, d.y_train, epochs=2.5), "epochs must be an integer >= 1"),
    (lambda n, d: n.predict(d.X_train[:, :10]), "X must be a 2-d array of samples x 64 features"),
    (lambda n, d: n.accuracy(d.X_train, d.y_train[:3]), "same number of samples"),
    (lambda n, d: n.loss(d.X_train, d.y_train + 20), r"class labels in \[0, 9\]"),
])
def test_shape_and_label_errors_name_the_parameter(data, call, match):
    net = Network.build([64, 8, 10], kind="modes", p=2, seed=0)
    with pytest.raises(ValueError, match=match):
        call(net, data)


def test_early_stopping_restores_the_best_epoch(data):
    net = Network.build([64, 32, 10], kind="modes", p=8, seed=0)
    Xv, yv = data.X_test, data.y_test
    h = fit(net, data.X_train, data.y_train, epochs=60, lr=0.05, validation=(Xv, yv), patience=2)
    assert h.status == "stopped" and "validation accuracy" in h.message
    assert h.best_epoch == int(np.argmax(h.val_acc)) < len(h.val_acc) - 1
    assert net.accuracy(Xv, yv) == h.val_acc[h.best_epoch]


@pytest.mark.parametrize("command", ["train", "analyse", "mnist"])
def test_every_option_has_help_text_and_shows_its_default(command, capsys):
    sub = next(a for a in parser()._subparsers._group_actions[0].choices["modenet"]._subparsers._group_actions)
    p = sub.choices[command]
    assert p.description and len(p.description) > 40
    for action in p._actions:
        if action.dest == "help" or not action.option_strings:
            continue
        assert action.help, f"{command} {action.option_strings}: no help text"
    with pytest.raises(SystemExit):
        parser().parse_args(["modenet", command, "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for action in p._actions:
        if action.option_strings and action.dest != "help" and action.default not in (None, False):
            assert f"(default: {action.default})" in text, f"{command} {action.option_strings}: default not shown"
