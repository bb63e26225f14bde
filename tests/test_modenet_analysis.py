"""Analyses of the mode network (importance, ablation, representations, modes scan, cost), their
fits and figures, and the ``modenet`` command line."""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
from matplotlib.figure import Figure

from onlinemdl.modenet import analysis as an, digits, io, xor_dataset
from onlinemdl.modenet.cli import add_subparser
from onlinemdl.modenet.fits import fit_log, piecewise_power_law
from onlinemdl.modenet.train import train_model


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained(data):
    net, _ = train_model(data, [48, 32], kind="modes", p=12, epochs=8, lr=5e-3, seed=0)
    dense, _ = train_model(data, [48, 32], kind="dense", epochs=8, lr=5e-3, seed=0)
    return net, dense


def test_fit_log_recovers_a_and_b():
    N = np.array([10, 30, 100, 300, 1000])
    fit = fit_log(N, 1.5 + 2.0 * np.log(N))
    assert fit["a"] == pytest.approx(1.5) and fit["b"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1.0) and fit["b_err"] == pytest.approx(0, abs=1e-9)
    noisy = fit_log(N, 1.5 + 2.0 * np.log(N) + [0.1, -0.2, 0.15, -0.05, 0.0])
    assert abs(noisy["b"] - 2.0) < 3 * noisy["b_err"] and noisy["r2"] < 1
    assert np.isnan(fit_log(N, [np.nan] * 4 + [3.0])["b"])


def test_piecewise_power_law_finds_the_breakpoint_and_exponents():
    r = np.arange(1, 61)
    noise = np.exp(0.03 * np.random.default_rng(0).standard_normal(60))
    tau = np.where(r < 10, r**-0.3, 10**-0.3 * (r / 10.0) ** -2.0) * noise
    fit = piecewise_power_law(tau, n_boot=40)
    assert len(fit.breaks) == 1
    assert abs(fit.breaks[0] - 10) < 4 * fit.breaks_err[0] + 0.5
    np.testing.assert_allclose(fit.slopes, [-0.3, -2.0], atol=4 * fit.slopes_err.max() + 0.02)
    np.testing.assert_allclose(fit(r), tau, rtol=0.15)
    single = piecewise_power_law(r ** -1.2, n_boot=5)
    assert len(single.breaks) == 0 and single.slopes[0] == pytest.approx(-1.2)
    with pytest.raises(ValueError, match="tau must be"):
        piecewise_power_law([1.0, -1.0, 0.5])


def test_mode_importance_balances_its_terms(trained):
    net, _ = trained
    for l in net.mode_layers():
        imp = an.mode_importance(net, l)
        lay = net.layers[l]
        norms = np.linalg.norm(lay.xi_out, axis=0) + np.linalg.norm(lay.xi_in, axis=0)
        assert imp["gamma"] * norms.mean() == pytest.approx(np.abs(lay.lam).mean())
        assert np.all(np.diff(imp["tau"]) <= 0) and sorted(imp["order"]) == list(range(len(lay.lam)))
    fits = an.importance_fits(net, n_boot=5)
    assert set(fits) == {0, 1, 2}
    assert isinstance(an.plot_mode_importance(fits), Figure)
    with pytest.raises(ValueError, match="mode layer"):
        an.mode_importance(trained[1], 0)


def test_ablation_all_modes_reproduces_the_unpruned_accuracy_exactly(trained, data):
    net, _ = trained
    results = {}
    for l in net.mode_layers():
        r = an.ablation(net, data.X_test, data.y_test, l, n_random=3)
        p = len(net.layers[l].lam)
        assert r["keep"][-1] == r["full"] == net.accuracy(data.X_test, data.y_test)  # keep all p modes
        assert r["leading"][0] == r["trailing"][0] == r["random"][0] == r["full"]  # remove none
        assert r["keep"][0] == r["leading"][-1] == r["trailing"][-1]  # keep none = remove all
        assert r["ks"][-1] == p
        results[l] = r
    # removing the leading modes of the first layer hurts more than removing the trailing ones
    r0 = results[0]
    assert r0["leading"][1:-1].mean() < r0["random"][1:-1].mean() < r0["trailing"][1:-1].mean()
    assert isinstance(an.plot_ablation(results), Figure)
    with pytest.raises(ValueError, match="ks must lie"):
        an.ablation(net, data.X_test, data.y_test, 0, ks=[99])


def test_participation_ratio_and_components_on_known_spectra():
    rng = np.random.default_rng(0)
    iso = rng.standard_normal((20000, 5))
    assert an.participation_ratio(iso) == pytest.approx(5, rel=0.02)
    assert an.n_components(iso, 0.9) == 5
    line = np.outer(rng.standard_normal(100), [1.0, 2.0, 3.0])
    assert an.participation_ratio(line) == pytest.approx(1.0)
    assert an.n_components(line) == 1


def test_representations_and_disentanglement(trained, data):
    net, dense = trained
    comp = {k: an.compactness(n, data.X_test) for k, n in (("modes", net), ("dense", dense))}
    for r in comp.values():
        np.testing.assert_array_equal(r["width"], [64, 48, 32])
        assert np.all(r["pr"] >= 1) and np.all(r["n_pc"] <= r["width"])
    dis = {k: an.disentanglement(n, data.X_test, data.y_test) for k, n in (("modes", net), ("dense", dense))}
    for r in dis.values():
        assert np.all((r["D"] > 0) & (r["D"] < 1)) and r["pairwise"].shape == (3, 10, 10)
    assert isinstance(an.plot_representations(comp, dis), Figure)


def test_disentanglement_of_orthogonal_and_identical_class_subspaces():
    class Identity:  # a "network" without hidden layers
        def hidden(self, X):
            return []
    rng = np.random.default_rng(0)
    a = np.zeros((50, 6))
    a[:, :3] = rng.standard_normal((50, 3))
    b = np.zeros((50, 6))
    b[:, 3:] = rng.standard_normal((50, 3))
    y = np.r_[np.zeros(50), np.ones(50)]
    assert an.disentanglement(Identity(), np.r_[a, b], y, k=3)["D"][0] == pytest.approx(1.0)
    assert an.disentanglement(Identity(), np.r_[a, a[::-1]], y, k=3)["D"][0] == pytest.approx(0.0, abs=1e-12)


def test_accuracy_vs_modes_least_modes_and_cost(data):
    scan = an.accuracy_vs_modes(data, [8, 16], [1, 4], epochs=2, lr=1e-2)
    assert scan["acc"].shape == (2, 2, 1) and scan["dense"].shape == (2, 1)
    p_min = an.least_modes(scan, target=0.01)
    np.testing.assert_array_equal(p_min, [1, 1])
    assert np.all(np.isnan(an.least_modes({**scan, "acc": 0 * scan["acc"]}, 0.5)))
    assert isinstance(an.plot_accuracy_vs_modes(scan, 0.01), Figure)
    c = an.cost(data, [32], kinds=("modes",), p=4, epochs=1)
    assert c["kinds"] == ["dense", "modes"] and c["params_ratio"][0] == 1
    assert c["params"][1] == (64 + 32 + 10) * 4 + 2 * 4 + 32 + 10  # tied sets, lam, biases
    assert np.all(c["seconds"] > 0)
    assert isinstance(an.plot_cost(c), Figure)


def test_xor_mode_maps():
    d = xor_dataset(n_train=400, n_test=200)
    net, _ = train_model(d, [3], kind="modes", p=3, activation="tanh", epochs=5, lr=1e-2, seed=1)
    maps = an.xor_mode_maps(net, n=21)
    assert maps["full"].shape == (21, 21) and maps["modes"].shape == (3, 21, 21)
    assert maps["directions"].shape == (3, 2)
    np.testing.assert_allclose(maps["full"][10, 10], net.forward(np.zeros((1, 2)))[0, 0])
    assert isinstance(an.plot_xor_modes(maps, d.X_test, d.y_test), Figure)


# --- command line --------------------------------------------------------------------------
def run_cli(*argv):
    parser = argparse.ArgumentParser(prog="onlinemdl")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(map(str, argv)))
    return args.func(args)


@pytest.mark.slow
def test_cli_train_and_analyse(tmp_path, capsys):
    model, dense = tmp_path / "m.h5", tmp_path / "d.h5"
    assert run_cli("modenet", "train", "--hidden", "32", "--p", "8", "--epochs", "3", "--out", model, "--quiet") == 0
    assert run_cli("modenet", "train", "--kind", "dense", "--hidden", "32", "--epochs", "3", "--out", dense,
                   "--quiet") == 0
    assert "test accuracy" in capsys.readouterr().out
    net, hist, _ = io.load(model)
    assert net.meta["kind"] == "modes" and net.meta["data"] == {"name": "digits", "seed": 0} and len(hist.loss) == 3
    out = tmp_path / "analysis"
    out.mkdir()
    assert run_cli("modenet", "analyse", model, "--compare", dense, "--out", out, "--n-boot", 3, "--n-random", 2) == 0
    assert sorted(os.listdir(out)) == ["ablation.png", "analysis.h5", "importance.png", "representations.png"]
    arrays, attrs = io.load_arrays(out / "analysis.h5")
    assert attrs["data"] == "digits"
    assert set(arrays["ablation"]) == {"layer1", "layer2"}
    assert "D" in arrays["representations"]["compare"]
    assert run_cli("modenet", "analyse", "--what", "modes-scan,cost", "--widths", "8,16", "--p-list", "2",
                   "--epochs", 1, "--out", out, "--quiet") == 0
    arrays, _ = io.load_arrays(out / "analysis.h5")
    assert arrays["modes_scan"]["acc"].shape == (2, 1, 1) and len(arrays["cost"]["kinds"]) == 5


def test_cli_xor_writes_mode_maps(tmp_path):
    out = tmp_path / "x.h5"
    assert run_cli("modenet", "train", "--data", "xor", "--hidden", "3", "--p", "3", "--activation", "tanh",
                   "--epochs", "2", "--out", out, "--quiet") == 0
    assert sorted(os.listdir(tmp_path)) == ["x.h5", "x_history.png", "x_modes.png"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "mnist", "--mnist", "{tmp}/none"], "does not exist"),
    (["train", "--kind", "lowrank", "--p", "0"], "p must be a positive integer"),
    (["train", "--out", "{tmp}/no/such/dir/m.h5"], "output folder"),
    (["analyse", "--out", "{tmp}"], "need a MODEL file"),
    (["analyse", "{tmp}/missing.h5", "--out", "{tmp}"], "missing.h5"),
    (["analyse", "--what", "everything", "--out", "{tmp}"], "--what must list"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "train":
        argv += ["--quiet"] + ([] if "--out" in argv else ["--out", str(tmp_path / "m.h5")])
    assert run_cli("modenet", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("onlinemdl modenet")
    assert os.listdir(tmp_path) == []


# --- MNIST measurements (experiments.py, fits.crossing / compare_laws) ------------------------
def test_crossing_interpolates_in_log_p_and_censors():
    from onlinemdl.modenet.fits import crossing
    assert crossing([1, 2, 4, 8], [0.5, 0.8, 0.9, 0.95], 0.85) == pytest.approx(2 * np.sqrt(2))
    assert crossing([2, 4], [0.9, 0.95], 0.8) == 2.0  # reached at the first point: p_min <= 2
    assert np.isnan(crossing([1, 2], [0.1, 0.2], 0.8))  # never reached
    with pytest.raises(ValueError, match="increasing"):
        crossing([2, 1], [0.1, 0.2], 0.1)


@pytest.mark.parametrize("truth", ["ln N", "ln N then constant", "power law"])
def test_compare_laws_prefers_the_law_that_made_the_data(truth):
    from onlinemdl.modenet.fits import compare_laws
    N = np.array([16, 32, 64, 128, 256, 512, 1024, 2048], float)
    p = {"ln N": 1 + 3 * np.log(N), "ln N then constant": 1 + 3 * np.log(np.minimum(N, 128)),
         "power law": 0.5 * N**0.6}[truth]
    p = p + 0.05 * np.random.default_rng(1).standard_normal(len(N))
    laws = compare_laws(N, p, np.full(len(N), 0.05))
    assert laws[0].name == truth and laws[0].aic < laws[1].aic - 1.9  # nested: ln N wins by 2 (one parameter fewer)
    assert all(np.isfinite([f.aic, f.bic, f.chi2]).all() for f in laws)
    with pytest.raises(ValueError, match="at least 4 points"):
        compare_laws(N[:3], p[:3], [0.1] * 3)


def test_class_separation_of_known_clusters():
    from onlinemdl.modenet.experiments import class_separation
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 500)
    H = rng.standard_normal((1000, 3)) + np.where(y[:, None] == 1, 4.0, 0.0) * np.array([1.0, 0, 0])
    assert class_separation(H, y) == pytest.approx(4.0 / 3.0, rel=0.1)  # between 4 / within 3 per sample
    assert class_separation(rng.standard_normal((1000, 3)), y) < 0.01


def test_results_are_dataclasses_with_named_fields(trained, data):
    from dataclasses import is_dataclass
    net, _ = trained
    imp = an.mode_importance(net, 0)
    assert is_dataclass(imp) and imp.tau is imp["tau"] and set(imp.as_dict()) == {"tau", "order", "gamma"}
    r = an.ablation(net, data.X_test, data.y_test, 0, ks=[0, 1], n_random=1)
    assert is_dataclass(r) and r.full == r["full"]
    with pytest.raises(KeyError, match="no field 'nope'"):
        r["nope"]
    assert is_dataclass(fit_log([1, 2, 3], [1, 2, 3]))


@pytest.mark.slow
def test_run_mnist_on_a_subset_gives_finite_measurements():
    from test_modenet_mnist import mnist_folder
    if mnist_folder() is None:
        pytest.skip("MNIST's four .gz files not found ($ONLINEMDL_MNIST or ../shared/data/mnist)")
    from onlinemdl.modenet import experiments as ex
    r = ex.run_mnist(kind="modes", p=4, hidden=[16, 16], epochs=2, patience=1, n_train=600, n_val=200, n_test=300,
                     ablate=True, fractions=(0.0, 0.5), n_random=2, mnist_path=str(mnist_folder()))
    assert r["status"] in ("ok", "stopped") and 0.2 < r["test_acc"] <= 1 and r["tau"].shape == (3, 4)
    assert r["abl_least"].shape == (3, 2) and np.all(r["abl_least"][:, 0] == r["test_acc"])
    assert all(np.all(np.isfinite(np.asarray(v, float))) for k, v in r.items() if k not in ("kind", "status", "message"))
    w = ex.run_width(16, p=2, epochs=1, n_train=600, n_val=200, n_test=300, mnist_path=str(mnist_folder()))
    assert w["width"] == 16 and w["p"] == 2 and 0 < w["test_acc"] <= 1
