"""Crash suite: kill -9 at random moments of scans, trajectory saves and CLI writes.

After every kill: no finished point or saved group is lost, every file opens, and no process of
the killed one is left behind. The moments are drawn from a fixed seed, so a failure replays.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from conftest import alive, descendants

from onlinemdl.scan import load_scan, scan
from onlinemdl.scan_store import ScanStore
from onlinemdl.storage import load_trajectory

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

HERE = os.path.dirname(os.path.abspath(__file__))

SCANNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_scan import toy
    from onlinemdl.scan import scan
    if __name__ == "__main__":
        print("ready", flush=True)
        scan({"rate": [0.1 * r for r in range(24)]}, run=toy, store=sys.argv[1], fixed={"delay": 0.05},
             workers=2, progress=False)
        print("done", flush=True)
""")

SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from onlinemdl.storage import save_trajectory
    from onlinemdl.trajectory import Trajectory
    path, first = sys.argv[1], int(sys.argv[2])
    n = 400
    print("ready", flush=True)
    for i in range(first, first + 1000):
        t = Trajectory(alpha=np.arange(n, dtype=float), steps=np.arange(n), eps_g=np.full(n, float(i)),
                       Q=np.full((n, 3, 3), float(i)), R=np.zeros((n, 3, 3)), T=np.eye(3), params={"i": i})
        save_trajectory(t, path, name=f"run{i}")
        print(f"saved {i}", flush=True)
""")

CLI = textwrap.dedent("""
    import sys
    from onlinemdl.cli import main
    out = sys.argv[1]
    tiny = ["--N", "10", "--M", "2", "--teacher", "random", "--student", "full", "--alpha-max", "5", "--points", "40",
            "--quiet", "--out"]
    main(["ode", *tiny, out + ".warm.h5"])  # compile and import before the moments to kill at
    main(["simulate", *tiny, out + ".warm.h5", "--replicas", "2", "--threads", "1"])
    tiny.append(out)
    print("ready", flush=True)
    for i in range(1000):
        assert main(["ode", *tiny, "--eta", str(0.5 + i % 3)]) == 0
        print(f"wrote ode {i}", flush=True)
        assert main(["simulate", *tiny, "--replicas", "2", "--threads", "1", "--seed", str(i)]) == 0
        print(f"wrote sim {i}", flush=True)
""")


def _kill_at_random(args, rng, low, high, before_kill=None):
    """Start ``args``, wait for its "ready", kill -9 it after a random delay in [low, high) s; returns
    (stdout lines, the value of ``before_kill()`` taken just before the kill)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=HERE)
    try:
        line = "start"
        while line and line.strip() != "ready":  # skip what a warm-up printed
            line = proc.stdout.readline()
        assert line.strip() == "ready", f"exited with {proc.wait(30)} before it was ready"
        time.sleep(rng.uniform(low, high))
        family = descendants(proc.pid)
        snapshot = before_kill() if before_kill else None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        lines = proc.stdout.read().splitlines()  # EOF: nothing still holds the pipe
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in family):
        time.sleep(0.05)
    assert not [p for p in family if alive(p)], "processes left behind"
    return lines, snapshot


def _no_temp_files(folder, keep=()):
    return [p.name for p in folder.iterdir() if p.name not in keep and (".tmp" in p.name or p.name.endswith(".probe"))]


def test_kill_scans_at_random_moments(tmp_path):
    rng = np.random.default_rng(10)
    from test_scan import toy
    reference = scan({"rate": [0.1 * r for r in range(24)]}, run=toy, store=tmp_path / "ref.h5", fixed={"delay": 0.0},
                     executor=ThreadPoolExecutor(2), progress=False)
    for trial in range(8):
        store = tmp_path / f"s{trial}.h5"
        st = ScanStore(store)
        lines, seen = _kill_at_random([sys.executable, "-c", SCANNER, str(store), HERE], rng, 0.0, 0.8,
                                      lambda: st.ids() if store.exists() or st.journal.exists() else set())
        if store.exists() or st.journal.exists():
            assert st.ids() >= seen  # no finished point lost
            partial = load_scan(store) if store.exists() else None
            if partial is not None:
                for idx in zip(*partial.done.nonzero()):
                    assert partial.result(*idx).params["rate"] == partial.points[idx]["rate"]
        resumed = scan({"rate": [0.1 * r for r in range(24)]}, run=toy, store=store, fixed={"delay": 0.05},
                       executor=ThreadPoolExecutor(2), progress=False)
        assert resumed.done.all() and resumed.computed <= 24 - len(seen)
        assert np.array_equal(resumed["eps_g"], reference["eps_g"])
        assert not _no_temp_files(tmp_path) and not list(tmp_path.glob("*.journal")) and not list(tmp_path.glob(".*lock"))


def test_kill_save_trajectory_at_random_moments(tmp_path):
    rng = np.random.default_rng(11)
    path = tmp_path / "runs.h5"
    saved = []
    for trial in range(8):
        lines, _ = _kill_at_random([sys.executable, "-c", SAVER, str(path), str(1000 * trial)], rng, 0.0, 1.0)
        saved += [int(line.split()[1]) for line in lines if line.startswith("saved")]
        if not path.exists():
            assert not saved
            continue
        with h5py.File(path, "r") as f:
            names = set(f)
        assert {f"run{i}" for i in saved} <= names  # every save that returned is there
        for name in sorted(names)[-3:]:
            traj = load_trajectory(path, name)
            assert np.all(traj.eps_g == traj.params["i"])
    from onlinemdl.storage import save_trajectory
    from onlinemdl.trajectory import Trajectory
    save_trajectory(Trajectory(alpha=np.zeros(1), steps=np.zeros(1), eps_g=np.zeros(1), Q=np.zeros((1, 1, 1)),
                               R=np.zeros((1, 1, 1)), T=np.eye(1)), path, name="after")
    assert not _no_temp_files(tmp_path) and not list(tmp_path.glob(".*lock"))  # the next writer cleaned up


def test_kill_cli_writes_at_random_moments(tmp_path):
    rng = np.random.default_rng(12)
    out = tmp_path / "cli.h5"
    wrote = set()
    for trial in range(6):
        lines, _ = _kill_at_random([sys.executable, "-c", CLI, str(out)], rng, 0.0, 1.5)
        wrote |= {line.split()[1] for line in lines if line.startswith(("wrote ode", "wrote sim"))}
        if out.exists():
            with h5py.File(out, "r") as f:
                assert set(f) >= wrote
            for name in wrote:
                assert load_trajectory(out, name).alpha[-1] == 5.0
        else:
            assert not wrote
    assert wrote  # some writes finished between the kills
