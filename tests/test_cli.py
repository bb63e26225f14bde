"""The onlinemdl command: every command end to end on tiny settings; bad input exits 2 with one line."""
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from onlinemdl.cli import main
from onlinemdl.scan import load_scan
from onlinemdl.storage import load_trajectory, save_trajectory

TINY = ["--N", "10", "--M", "2", "--teacher", "random", "--student", "full", "--alpha-max", "5", "--points", "8"]


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("command, expected", [
    ([], ["demo", "ode", "simulate", "scan", "plot"]),
    (["demo"], ["--alpha-max", "--replicas", "--method", "--seed", "--out", "onlinemdl_out"]),
    (["ode"], ["--N", "--eta", "--eta-A", "--train", "--teacher-seed", "--alpha-max", "--points", "--method", "--out"]),
    (["simulate"], ["--N", "--eta", "--replicas", "--seed", "--threads", "{gram,explicit}", "--out"]),
    (["scan"], ["config", "--store", "--workers", "--scheduler", "[grid]", "[[points]]"]),
    (["plot"], ["file", "--out"]),
])
def test_help_is_complete(cli, command, expected):
    code, out, _ = cli(*command, "--help")
    assert code == 0
    for word in expected:
        assert word in out


@pytest.mark.slow
def test_module_and_console_script_help():
    out = subprocess.run([sys.executable, "-m", "onlinemdl", "--help"], capture_output=True, text=True, check=True)
    assert "usage: onlinemdl" in out.stdout
    script = shutil.which("onlinemdl")
    if script:
        out = subprocess.run([script, "ode", "--help"], capture_output=True, text=True, check=True)
        assert "usage: onlinemdl ode" in out.stdout


def test_demo_writes_h5_and_png(cli, tmp_path):
    code, out, err = cli("demo", "--alpha-max", "20", "--replicas", "2", "--threads", "1")
    assert code == 0, err
    assert "ODE:" in out and "simulation:" in out and "plateau" in out
    assert "wrote onlinemdl_out/demo.h5" in out and "wrote onlinemdl_out/demo.png" in out
    h5 = tmp_path / "onlinemdl_out" / "demo.h5"
    ode, sim = load_trajectory(h5, "ode"), load_trajectory(h5, "sim")
    assert ode.kind == "ode" and sim.kind == "sgd" and sim.eps_g.shape[0] == 2
    assert ode.params["N"] == 30 and ode.params["K"] == 8 and ode.params["p"] == 3 and ode.params["eta"] == 5.0
    assert ode.alpha[-1] == 20.0 and sim.params["spec"]["replicas"] == 2
    with h5py.File(h5, "r") as f:
        assert set(f) == {"ode", "sim", "plateaus"}
    assert (tmp_path / "onlinemdl_out" / "demo.png").stat().st_size > 1000


def test_ode_simulate_plot_end_to_end(cli, tmp_path):
    code, out, err = cli("ode", *TINY, "--eta", "0.5", "--out", "run.h5")
    assert code == 0, err
    assert out.startswith("ode: eps_g") and "wrote run.h5" in out
    code, out, err = cli("simulate", *TINY, "--eta", "0.5", "--replicas", "2", "--threads", "1", "--out", "run.h5")
    assert code == 0, err
    assert "mean of 2 replicas" in out
    ode, sim = load_trajectory("run.h5", "ode"), load_trajectory("run.h5", "sim")  # both groups kept
    assert ode.params["eta"] == sim.params["eta"] == 0.5 and ode.params["spec"]["teacher"] == "random"
    assert np.allclose(ode.eps_g[-1], sim.mean().eps_g[-1], rtol=0.5)
    for _ in range(2):  # the second time replaces the figure
        code, out, _ = cli("plot", "run.h5")
        assert code == 0 and "wrote run.png" in out and (tmp_path / "run.png").exists()
    save_trajectory(ode, "single.h5")
    code, out, _ = cli("plot", "single.h5", "--out", "figs/single.png")
    assert code == 0 and (tmp_path / "figs" / "single.png").exists()


def test_scan_from_toml_resumes_and_plots(cli, tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "scan.toml").write_text(textwrap.dedent("""
        run = "ode"
        store = "etas.h5"
        [fixed]
        N = 10
        M = 2
        teacher = "random"
        student = "full"
        alpha_max = 5.0
        points = 8
        [grid]
        eta = [0.5, 1.0]
        K = [1, 2]
    """))
    code, out, err = cli("scan", "cfg/scan.toml", "--workers", "1", "--quiet")
    assert code == 0, err
    assert "scan: 4 points (4 computed, 0 already stored)" in out and "eta=1.0 K=2: ok, final eps_g" in out
    code, out, _ = cli("scan", "cfg/scan.toml", "--quiet")
    assert "(0 computed, 4 already stored)" in out
    res = load_scan(tmp_path / "cfg" / "etas.h5")
    assert res.shape == (2, 2) and res["eps_g"].shape == (2, 2, 9)
    code, out, _ = cli("plot", "cfg/etas.h5")
    assert code == 0 and (tmp_path / "cfg" / "etas.png").exists()


@pytest.mark.slow
def test_scan_points_on_a_dask_scheduler(cli, tmp_path):
    distributed = pytest.importorskip("distributed")
    (tmp_path / "pts.toml").write_text(textwrap.dedent("""
        [fixed]
        N = 10
        M = 2
        teacher = "random"
        student = "full"
        alpha_max = 2.0
        points = 4
        [[points]]
        eta = 0.5
        [[points]]
        eta = 1.0
        K = 1
    """))
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        code, out, err = cli("scan", "pts.toml", "--scheduler", cluster.scheduler_address, "--store", "p.h5", "--quiet")
    assert code == 0, err
    assert "scan: 2 points (2 computed" in out and "eta=1.0 K=1: ok" in out
    assert load_scan(tmp_path / "p.h5").axes == {"point": [0, 1]}


@pytest.mark.parametrize("args, message", [
    (["ode", "--bogus"], "unrecognized arguments: --bogus (see 'onlinemdl ode --help')"),
    (["ode", "--alpha", "10"], "unrecognized arguments: --alpha 10"),  # no abbreviations
    (["--bogus"], "unrecognized arguments: --bogus (see 'onlinemdl --help')"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["ode", "--N", "x"], "argument --N: invalid int value: 'x'"),
    (["ode", "--teacher", "wise"], "argument --teacher: invalid choice: 'wise'"),
    (["ode", "--eta", "-1", "--N", "10", "--M", "2"], "eta must be a finite number > 0, got -1.0"),
    (["ode", "--N", "10", "--M", "2", "--K", "3"], 'K must equal M = 2 for student="teacher-modes"'),
    (["simulate", *TINY, "--replicas", "0"], "replicas must be an integer >= 1, got 0"),
    (["ode", *TINY, "--out", "notes.txt/run.h5"], "out: notes.txt is not a directory"),
    (["ode", *TINY, "--out", "notes.txt"], "notes.txt: not an HDF5 file"),
    (["plot", "missing.h5"], "missing.h5: no such file"),
    (["plot", "notes.txt"], "notes.txt: not an HDF5 file"),
    (["scan", "missing.toml"], "missing.toml: no such file"),
    (["scan", "notes.txt"], "notes.txt: Expected '=' after a key"),
    (["scan", "extra.toml"], "unknown keys ['gird']"),
    (["scan", "badrun.toml"], "run: cannot import 'nowhere:f'"),
    (["scan", "negative.toml", "--workers", "1", "--quiet"], "run failed at {'eta': -1.0}: ValueError: eta must be"),
    (["demo", "--out", "notes.txt"], "out: notes.txt is not a directory"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("hello world\n")
    (tmp_path / "extra.toml").write_text("[gird]\neta = [1.0]\n")
    (tmp_path / "badrun.toml").write_text('run = "nowhere:f"\n[grid]\neta = [1.0]\n')
    (tmp_path / "negative.toml").write_text("[fixed]\nalpha_max = 1.0\n[grid]\neta = [-1.0]\n")
    before = files(tmp_path)
    code, out, err = cli(*args)
    assert code == 2
    assert err.startswith("onlinemdl: error: ") and err.count("\n") == 1
    assert message in err
    assert files(tmp_path) == before
