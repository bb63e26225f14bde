"""HDF5 storage: exact round-trips of every Trajectory kind and parameter type, atomic writes."""
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields

import h5py
import numpy as np
import pytest
from conftest import assert_same_trajectory

import onlinemdl as om
from onlinemdl import storage
from onlinemdl.storage import load_trajectory, save_trajectory
from onlinemdl.trajectory import Trajectory

ALL_TYPES = dict(
    none=None, true=True, false=False, int=-3, big_int=2**70, float=1.5, nan=float("nan"), inf=-float("inf"),
    complex=1 - 2j, str="x é", empty_str="", np_bool=np.bool_(True), np_int8=np.int8(-4), np_uint64=np.uint64(2**63),
    np_float32=np.float32(0.1), np_float16=np.float16(2.5), np_complex=np.complex64(1j), array=np.arange(6.0).reshape(2, 3),
    array0d=np.array(2.0), int_array=np.arange(3, dtype=np.int16), bool_array=np.array([True, False]),
    empty_array=np.zeros((0, 3)), str_array=np.array(["ab", "c"]), bytes_array=np.array([b"a", b"bc"]),
    big_array=np.arange(20000.0), list_int=[1, 2], list_float=[0.5, float("nan")], list_bool=[True], list_str=["xi", "A"],
    tuple_str=("xi", "lam"), tuple_int=(1, 2), empty_list=[], empty_tuple=(), mixed=[1, "a", None, [2.5, {"k": True}]],
    list_big_int=[1, 2**70], nested={"a": 1, "b": {"c": [1.0, 2.0], "d": np.eye(2), "e": None}},
)


def _modes_pair(N=12, M=3):
    teacher = om.Teacher.modes(N, M, seed=0)
    return teacher, om.Student.from_teacher_modes(teacher, seed=1)


def _sgd_by_hand(replicas):
    rng = np.random.default_rng(0)
    n, K, M, p = 5, 2, 3, 2
    lead = (replicas,) if replicas > 1 else ()
    series = lambda *shape: rng.standard_normal(lead + (n,) + shape)
    diverged = np.array([False, True, False][:replicas])
    return Trajectory(alpha=np.linspace(0, 1, n), steps=np.arange(n, dtype=np.int64), eps_g=series(), Q=series(K, K),
                      R=series(K, M), T=np.eye(M), Rm=series(p, p), S=series(p, M), lam=series(p), A=series(K, p),
                      v=series(K), eps_test=series(), kind="sgd", params=dict(ALL_TYPES), status="diverged",
                      message="1 of 3 replicas diverged", nfev=123, diverged=diverged,
                      alpha_diverged=np.where(diverged, 0.5, np.nan))


def trajectories():
    teacher, student = _modes_pair()
    full_t = om.Teacher.random(10, 2, seed=0)
    full_s = om.Student.full(10, 2, seed=1, train=("w", "v"))
    out = {
        "ode_modes": om.integrate(student, teacher, eta=1.0, alpha_max=1.0, points=4, form="modes"),
        "ode_reduced": om.integrate(student, teacher, eta=1.0, alpha_max=1.0, points=4),
        "ode_full": om.integrate(full_s, full_t, eta=1.0, alpha_max=1.0, points=4),
        "sgd_replicas": _sgd_by_hand(3),
        "sgd_single": _sgd_by_hand(1),
        "modenet": Trajectory(alpha=np.array([0.0, 1.0]), steps=np.array([0, 10]), eps_g=np.array([0.5, 0.25]),
                              Q=np.ones((2, 1, 1)), R=np.ones((2, 1, 1)), T=np.ones((1, 1)), kind="modenet",
                              params={"widths": [784, 128, 10], "lr": 3e-3}),
        "sgd_real": om.simulate(student, teacher, eta=1.0, alpha_max=1.0, points=4, replicas=2, method="gram",
                                threads=1),
    }
    out["ode_modes"].params.update(ALL_TYPES)
    return out


@pytest.fixture(scope="module")
def trajs():
    return trajectories()


def test_every_kind_round_trips_exactly(trajs, tmp_path):
    path = tmp_path / "all.h5"
    for name, traj in trajs.items():
        save_trajectory(traj, path, name=name)
    for name, traj in trajs.items():
        back = load_trajectory(path, name=name)
        assert_same_trajectory(back, traj)
    with h5py.File(path, "r") as f:
        assert sorted(storage.trajectory_names(f)) == sorted(trajs)
        assert f.attrs["format_version"] == storage.FORMAT_VERSION
        assert f.attrs["onlinemdl_version"] == om.__version__
        g = f["ode_modes"]
        assert g.attrs["onlinemdl_object"] == "Trajectory" and g.attrs["kind"] == "ode"
        assert g["params"].attrs["eta"] == 1.0  # parameters are plain attributes
        assert list(g["params"].attrs["train"]) == ["xi"]


def test_group_target_and_single_trajectory_lookup(trajs, tmp_path):
    path = tmp_path / "one.h5"
    save_trajectory(trajs["ode_full"], path)
    assert_same_trajectory(load_trajectory(path), trajs["ode_full"])  # the only trajectory in the file
    with h5py.File(tmp_path / "group.h5", "w") as f:
        save_trajectory(trajs["sgd_replicas"], f, name="runs/a")
        save_trajectory(trajs["ode_full"], f["runs"], name="b")
        assert_same_trajectory(load_trajectory(f["runs/a"]), trajs["sgd_replicas"])
        with pytest.raises(ValueError, match="name: .* holds 2 trajectories"):
            load_trajectory(f["runs"])
        assert not [k for k in f["runs"] if k.startswith(".")]  # no hidden partial groups left


def test_overwrite_and_errors(trajs, tmp_path):
    path = tmp_path / "x.h5"
    save_trajectory(trajs["ode_full"], path, name="run")
    with pytest.raises(ValueError, match="already holds 'run'"):
        save_trajectory(trajs["ode_modes"], path, name="run")
    save_trajectory(trajs["ode_modes"], path, name="run", overwrite=True)
    assert_same_trajectory(load_trajectory(path, name="run"), trajs["ode_modes"])
    with pytest.raises(ValueError, match="has no group 'nope'"):
        load_trajectory(path, name="nope")
    with pytest.raises(FileNotFoundError):
        load_trajectory(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        load_trajectory(tmp_path / "text.h5")
    bad = Trajectory(**{f.name: getattr(trajs["ode_full"], f.name) for f in fields(Trajectory)})
    bad.params = {"f": lambda: 0}
    with pytest.raises(ValueError, match=r"params\['f'\]: cannot store a value of type function"):
        save_trajectory(bad, path, name="bad")
    with h5py.File(path, "r") as f:
        assert set(f) == {"run"}  # the failed write left nothing
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_newer_format_is_refused(trajs, tmp_path):
    path = tmp_path / "new.h5"
    save_trajectory(trajs["ode_full"], path)
    with h5py.File(path, "r+") as f:
        f["trajectory"].attrs["format_version"] = storage.FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="newer than this onlinemdl"):
        load_trajectory(path, name="trajectory")


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from onlinemdl import storage
    from onlinemdl.storage import save_trajectory
    from onlinemdl.trajectory import Trajectory

    path, hang_at = sys.argv[1], int(sys.argv[2])
    n = 200
    def traj(i):
        return Trajectory(alpha=np.arange(n) + i, steps=np.arange(n), eps_g=np.full(n, float(i)),
                          Q=np.full((n, 4, 4), float(i)), R=np.zeros((n, 4, 4)), T=np.eye(4), params={"i": i})
    write = storage.write_record
    def hanging(group, record, *args):
        write(group, record, *args)
        if group.name.endswith("params") and record["i"] == hang_at:
            group.file.flush()
            print("mid-write", flush=True)
            time.sleep(60)
    storage.write_record = hanging
    for i in range(hang_at + 1):
        save_trajectory(traj(i), path, name=f"run{i}")
""")


@pytest.mark.slow
@pytest.mark.parametrize("hang_at", [0, 3])
def test_writer_killed_mid_write_leaves_only_complete_runs(tmp_path, hang_at):
    path = tmp_path / "runs.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(hang_at)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "mid-write"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # it died inside a write
    if hang_at == 0:
        assert not path.exists()
        return
    with h5py.File(path, "r") as f:
        assert sorted(f) == [f"run{i}" for i in range(hang_at)]
    for i in range(hang_at):
        traj = load_trajectory(path, name=f"run{i}")
        assert traj.params == {"i": i} and np.all(traj.Q == i)


@pytest.mark.slow
def test_reader_sees_old_or_new_file_during_writes(tmp_path):
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "30"], stdout=subprocess.PIPE, text=True)
    seen = set()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and len(seen) < 3:
            if path.exists():
                with h5py.File(path, "r") as f:
                    names = sorted(f)
                for name in names:
                    assert load_trajectory(path, name=name).params["i"] == int(name[3:])
                seen.add(len(names))
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(30)
    assert len(seen) >= 2  # several versions of the file, each complete


# --------------------------------------------------------------------------------------
# Hardening (issue 10): concurrent writers, targets checked first, corrupt inputs named
# --------------------------------------------------------------------------------------
def _small(i, n=20):
    return Trajectory(alpha=np.arange(n, dtype=float), steps=np.arange(n), eps_g=np.full(n, float(i)),
                      Q=np.full((n, 2, 2), float(i)), R=np.zeros((n, 2, 2)), T=np.eye(2), params={"i": i})


def test_concurrent_saves_to_one_file_keep_every_group(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    path = tmp_path / "race.h5"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: save_trajectory(_small(i), path, name=f"run{i}"), range(24)))
    with h5py.File(path, "r") as f:
        assert sorted(f, key=lambda k: int(k[3:])) == [f"run{i}" for i in range(24)]
    assert [p.name for p in tmp_path.iterdir()] == ["race.h5"]  # no lock or temp file left


RACER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from onlinemdl.storage import save_trajectory
    from onlinemdl.trajectory import Trajectory
    path, k, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    n = 50
    time.sleep(max(0.0, start - time.time()))
    for j in range(5):
        t = Trajectory(alpha=np.arange(n, dtype=float), steps=np.arange(n), eps_g=np.full(n, 1.0 * k),
                       Q=np.ones((n, 2, 2)), R=np.ones((n, 2, 2)), T=np.eye(2))
        save_trajectory(t, path, name=f"p{k}_{j}")
""")


@pytest.mark.slow
def test_concurrent_processes_saving_to_one_file_lose_nothing(tmp_path):
    path = tmp_path / "race.h5"
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(path), str(k), str(start)]) for k in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    with h5py.File(path, "r") as f:
        assert sorted(f) == sorted(f"p{k}_{j}" for k in range(3) for j in range(5))


def test_targets_are_checked_first_and_name_the_users_path(tmp_path):
    traj = _small(0)
    (tmp_path / "adir").mkdir()
    with pytest.raises(ValueError, match="target: .*adir is a directory"):
        save_trajectory(traj, tmp_path / "adir")
    with pytest.raises(FileNotFoundError, match=r"target: .*missing/x\.h5: the folder .*missing does not exist"):
        save_trajectory(traj, tmp_path / "missing" / "x.h5")
    with pytest.raises(ValueError, match="target must name a file"):
        save_trajectory(traj, "")
    path = tmp_path / "x.h5"
    save_trajectory(traj, path, name="run")
    with pytest.raises(ValueError, match=rf"name: {path} already holds 'run'") as err:
        save_trajectory(traj, path, name="run")
    assert ".tmp" not in str(err.value)
    (tmp_path / "trunc.h5").write_bytes(path.read_bytes()[:800])
    with pytest.raises(ValueError, match=r"trunc\.h5: cannot be opened as HDF5, truncated or corrupt"):
        save_trajectory(traj, tmp_path / "trunc.h5")
    with pytest.raises(ValueError, match=r"trunc\.h5: cannot be opened as HDF5"):
        load_trajectory(tmp_path / "trunc.h5")
    with pytest.raises(ValueError, match="adir: is a directory, not an HDF5 file"):
        load_trajectory(tmp_path / "adir")
    with pytest.raises(TypeError, match="traj must be a Trajectory"):
        save_trajectory({"eps_g": 1}, path, name="d")
    with pytest.raises(ValueError, match="name must be a relative group path"):
        save_trajectory(traj, path, name="a//b")
    with pytest.raises(TypeError, match="name must be a str"):
        save_trajectory(traj, path, name=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "trunc.h5", "x.h5"]


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    path = tmp_path / "x.h5"
    save_trajectory(_small(0), path, name="a")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.h5.{int(dead.stdout)}.deadbeef.tmp.h5"
    stale.write_bytes(b"half a file")
    save_trajectory(_small(1), path, name="b")
    assert not stale.exists() and load_trajectory(path, "b").params == {"i": 1}


def test_all_diverged_mean_sem_and_summary():
    traj = _sgd_by_hand(3)
    traj.diverged = np.array([True, True, True])
    traj.alpha_diverged = np.array([0.25, 0.5, 0.25])
    traj.eps_g[0, 2:] = np.nan
    traj.eps_g[1, 3:] = np.nan
    traj.eps_g[2, 2:] = np.nan
    mean, sem = traj.mean().eps_g, traj.sem().eps_g
    assert np.allclose(mean[:2], traj.eps_g[:, :2].mean(axis=0)) and mean[2] == traj.eps_g[1, 2]
    assert np.isnan(mean[3:]).all() and sem[2] == 0.0 and np.isfinite(sem[:2]).all()
    text = traj.summary()
    assert "all 3 replicas diverged" in text and "nan" not in text and "at alpha = 0.5" in text


def test_at_refuses_non_finite_alpha():
    traj = _small(0)
    assert traj.at(3.2) == 3
    for bad in (float("nan"), float("inf"), None, "1"):
        with pytest.raises((ValueError, TypeError), match="alpha must be"):
            traj.at(bad)


def test_nan_weights_set_after_construction_are_named():
    teacher, student = _modes_pair()
    student.Xi[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"student\.Xi holds non-finite values"):
        om.simulate(student, teacher, eta=1.0, alpha_max=1.0)
    with pytest.raises(ValueError, match=r"student\.Xi holds non-finite values"):
        om.integrate(student, teacher, eta=1.0, alpha_max=1.0)
