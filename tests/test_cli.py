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


def _truncated_h5(tmp_path) -> bytes:
    """The first 1000 bytes of a real trajectory file: an HDF5 signature, a truncated body."""
    from onlinemdl.trajectory import Trajectory
    src = tmp_path / "src.h5"
    n = 50
    save_trajectory(Trajectory(alpha=np.arange(n), steps=np.arange(n), eps_g=np.ones(n), Q=np.ones((n, 1, 1)),
                               R=np.ones((n, 1, 1)), T=np.eye(1)), src)
    data = src.read_bytes()[:1000]
    src.unlink()
    return data


def files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("command, expected", [
    ([], ["demo", "ode", "simulate", "scan", "plot"]),
    (["demo"], ["--alpha-max", "--replicas", "--method", "--seed", "--out", "onlinemdl_out"]),
    (["ode"], ["--N", "--eta", "--eta-A", "--train", "--teacher-seed", "--alpha-max", "--points", "--method",
               "--fluctuations", "--out"]),
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


def test_ode_with_the_finite_n_theory(cli, tmp_path):
    code, out, err = cli("ode", *TINY, "--eta", "0.5", "--fluctuations", "fixed", "--out", "fl.h5")
    assert code == 0, err
    assert "finite-N theory at N = 10: one run's eps_g at alpha = 5" in out
    ode = load_trajectory("fl.h5", "ode")
    assert ode.params["fluctuations"] == "fixed" and ode.params["spec"]["fluctuations"] == "fixed"
    assert ode.eps_g_sd.shape == ode.eps_g.shape and np.all(ode.eps_g_sd[1:] > 0)
    code, out, _ = cli("plot", "fl.h5")
    assert code == 0 and (tmp_path / "fl.png").exists()
    code, out, err = cli("ode", *TINY, "--fluctuations", "yes", "--out", "bad.h5")
    assert code != 0 and "--fluctuations" in err and not (tmp_path / "bad.h5").exists()
    code, out, err = cli("ode", *TINY, "--init", "informed", "--fluctuations", "fresh", "--out", "bad.h5")
    assert code != 0 and "i.i.d. initial weights" in err and not (tmp_path / "bad.h5").exists()


@pytest.mark.slow
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
    (["scan", "negative.toml", "--workers", "1", "--quiet"], "grid: point {'eta': -1.0}: eta must be a finite number > 0"),
    (["demo", "--out", "notes.txt"], "out: notes.txt is not a directory"),
    # outputs are checked before any work, and errors name the user's path (issue 10, items 4, 5, 12)
    (["ode", *TINY, "--out", "adir"], "out: adir is a directory; give a file name"),
    (["ode", *TINY, "--out", ""], "out must name a file, got ''"),
    (["simulate", *TINY, "--out", "adir"], "out: adir is a directory"),
    (["ode", *TINY, "--out", "trunc.h5"], "trunc.h5: cannot be opened as HDF5, truncated or corrupt?"),
    (["plot", "trunc.h5"], "trunc.h5: cannot be opened as HDF5, truncated or corrupt?"),
    (["plot", "adir"], "adir: is a directory, not an HDF5 file"),
    (["plot", "notes.txt", "--out", "adir"], "notes.txt: not an HDF5 file"),
    (["scan", "adir"], "adir: is a directory, not a TOML file"),
    (["scan", "negative.toml", "--store", "adir"], "store: adir is a directory"),
    (["scan", "negative.toml", "--store", "trunc.h5"], "trunc.h5: cannot be opened as HDF5"),
    (["demo", "--replicas", "0"], "replicas must be an integer >= 1, got 0"),  # before the ODE runs
    (["demo", "--threads", "0"], "threads must be an integer >= 1, got 0"),
    (["demo", "--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["demo", "--alpha-max", "nan"], "alpha_max must be a finite number > 0, got nan"),
    (["ode", "--method", "foo"], "method must be one of 'auto', 'euler', 'RK23'"),
    (["ode", *TINY, "--train", ","], "train must name at least one factor"),
    (["ode", *TINY, "--eta", "inf"], "eta must be a finite number > 0, got inf"),
    (["ode", *TINY, "--batch", "0"], "batch must be an integer >= 1, got 0"),
    (["ode", *TINY, "--weight-decay", "-1"], "weight_decay must be a finite number >= 0"),
    (["ode", *TINY, "--max-norm", "0"], "max_norm must be a finite number > 0"),
    (["ode", *TINY, "--points", "1"], "points must be an integer >= 2, got 1"),
    (["simulate", *TINY, "--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["simulate", *TINY, "--test-set", "-1"], "test_set must be an integer >= 0, got -1"),
    (["simulate", *TINY, "--threads", "0"], "threads must be an integer >= 1, got 0"),
    # TOML type errors: one line naming the key and the type wanted, before any work (item 6)
    (["scan", "store5.toml"], "store5.toml: store must be a string (a path, relative to the config file), got an integer"),
    (["scan", "fixedlist.toml"], "fixedlist.toml: fixed must be a table [fixed] of parameters, got an array [1, 2]"),
    (["scan", "alphastr.toml", "--quiet"], "alpha_max must be a finite number > 0, got '1e4'"),
    (["scan", "workersstr.toml"], "workers must be an integer >= 1, got a string '2'"),
    (["scan", "gridscalar.toml"], "grid.eta must be a list of values, got a float 1.0"),
    (["scan", "runint.toml"], "run must be a string"),
    (["scan", "etastr.toml", "--quiet"], "eta must be a finite number > 0, got '5'"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("hello world\n")
    (tmp_path / "extra.toml").write_text("[gird]\neta = [1.0]\n")
    (tmp_path / "badrun.toml").write_text('run = "nowhere:f"\n[grid]\neta = [1.0]\n')
    (tmp_path / "negative.toml").write_text("[fixed]\nalpha_max = 1.0\n[grid]\neta = [-1.0]\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "trunc.h5").write_bytes(_truncated_h5(tmp_path))
    for name, text in {"store5": "store = 5", "fixedlist": "fixed = [1, 2]", "workersstr": 'workers = "2"',
                       "gridscalar": "[grid]\neta = 1.0", "runint": "run = 3",
                       "alphastr": '[fixed]\nalpha_max = "1e4"', "etastr": "[grid]\neta = ['5']"}.items():
        grid = "" if "[grid]" in text else "\n[grid]\neta = [1.0]"
        (tmp_path / f"{name}.toml").write_text(text + grid + "\n")
    before = files(tmp_path)
    code, out, err = cli(*args)
    assert code == 2
    assert err.startswith("onlinemdl: error: ") and err.count("\n") == 1
    assert message in err
    assert files(tmp_path) == before


@pytest.mark.parametrize("args", [["demo", "--replicas", "0"], ["demo", "--threads", "0"], ["demo", "--out", "adir/x/"],
                                  ["ode", "--method", "foo"], ["ode", "--out", "adir"], ["simulate", "--seed", "1.5"],
                                  ["simulate", "--out", "trunc.h5"]])
def test_arguments_and_outputs_are_checked_before_any_work(cli, tmp_path, monkeypatch, args):
    _forbid_runs(monkeypatch)
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "x").write_text("a file where a folder is needed")
    (tmp_path / "trunc.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    code, out, err = cli(*args)
    assert code == 2 and err.startswith("onlinemdl: error: ") and err.count("\n") == 1, err


def _forbid_runs(monkeypatch):
    """Make the CLI's runs fail loudly (same signatures, so the parser still builds)."""
    import functools

    import onlinemdl.cli as cli_module
    for name in ("run_ode", "run_simulation"):
        original = getattr(cli_module, name)

        @functools.wraps(original)
        def must_not_run(**kw):
            raise AssertionError("ran before the arguments were checked")

        monkeypatch.setattr(cli_module, name, must_not_run)


def _read_only(folder):
    """Make ``folder`` read-only even for root (chattr +i); None where that is not possible."""
    folder.chmod(0o555)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return lambda: folder.chmod(0o755)
    (folder / "probe").unlink()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o755)
        return None
    return lambda: (subprocess.run(["chattr", "-i", str(folder)]), folder.chmod(0o755))


def test_read_only_folder_is_refused_before_work_naming_the_path(cli, tmp_path, monkeypatch):
    _forbid_runs(monkeypatch)
    ro = tmp_path / "rodir"
    ro.mkdir()
    undo = _read_only(ro)
    if undo is None:
        pytest.skip("cannot make a read-only folder here")
    try:
        code, _, err = cli("ode", *TINY, "--out", "rodir/x.h5")
        assert code == 2 and "out: rodir/x.h5: cannot write in rodir" in err and ".tmp" not in err
        with pytest.raises(PermissionError, match=r"x\.h5: cannot write in .*rodir"):
            save_trajectory(_tiny_trajectory(), ro / "x.h5")
    finally:
        undo()
    assert list(ro.iterdir()) == []


def _tiny_trajectory():
    from onlinemdl.trajectory import Trajectory
    n = 4
    return Trajectory(alpha=np.arange(n, dtype=float), steps=np.arange(n), eps_g=np.ones(n), Q=np.ones((n, 1, 1)),
                      R=np.ones((n, 1, 1)), T=np.eye(1))


def test_all_replicas_diverged_reports_values_up_to_divergence_and_plots(cli, tmp_path):
    code, out, err = cli("simulate", "--eta", "10000", "--alpha-max", "10", "--replicas", "2", "--threads", "1",
                         "--out", "d.h5")
    assert code == 0, err
    assert "all 2 replicas diverged" in out and "nan" not in out
    sim = load_trajectory("d.h5", "sim")
    assert sim.diverged.all() and np.isfinite(sim.mean().eps_g[0]) and np.isfinite(sim.sem().eps_g[0])
    code, out, err = cli("plot", "d.h5")
    assert code == 0, err
    assert (tmp_path / "d.png").stat().st_size > 1000


class _Terminal:
    """A stand-in for a terminal's stderr."""

    def __init__(self):
        self.text = []

    def write(self, text):
        self.text.append(text)

    def flush(self):
        pass

    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_terminal_only_and_not_with_quiet(cli, monkeypatch, quiet):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    code, out, _ = cli("ode", *TINY, "--out", "r.h5", *(["--quiet"] if quiet else []))
    assert code == 0 and "wrote r.h5" in out
    shown = "".join(term.text)
    assert ("ode: integrating to alpha = 5" in shown) != quiet
    code, out, err = cli("ode", *TINY, "--out", "r.h5")  # stderr not a terminal (captured): no bar
    assert code == 0 and "integrating" not in err


def test_cli_exposes_every_option_of_the_dynamics(cli):
    from onlinemdl.dynamics import OPTIONS
    for command in ("ode", "simulate"):
        code, out, _ = cli(command, "--help")
        for name in OPTIONS:
            assert f"--{name.replace('_', '-')}" in out
        for option in ("--weight-decay", "--batch", "--activation", "--max-norm", "--quiet"):
            assert option in out
    code, out, _ = cli("simulate", "--help")
    assert "--test-set SIZE" in out
    code, out, _ = cli("demo", "--help")
    assert "--quiet" in out


def test_new_files_follow_the_umask(cli, tmp_path):
    import os
    old = os.umask(0o022)
    try:
        code, _, err = cli("ode", *TINY, "--out", "m.h5")
        assert code == 0, err
        code, _, err = cli("plot", "m.h5")
        assert code == 0, err
    finally:
        os.umask(old)
    assert (tmp_path / "m.h5").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == 0o644
