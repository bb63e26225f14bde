"""Start-up cost: ``import onlinemdl`` and a whole small run as a fresh process.

Targets (issue "seams", item 8): ``python -c "import onlinemdl"`` at most 0.2 s of CPU; the K = M = 2
ODE to alpha = 1000 as a whole process, with a warm kernel cache, at most 0.5 s of CPU. CPU time
(user + system of the child) is measured with ``resource.getrusage``; medians of ``--repeats``
interleaved runs, with the bare interpreter as the reference.

Run: python benchmarks/bench_startup.py [--repeats 7]
"""
import argparse
import resource
import statistics
import subprocess
import sys

SCRIPTS = {
    "python (bare interpreter)": "pass",
    "import onlinemdl": "import onlinemdl",
    "K = M = 2 ODE to alpha = 1000": (
        "import onlinemdl as om\n"
        "t = om.Teacher.orthonormal(100, 2, seed=0)\n"
        "s = om.Student.full(100, 2, seed=1)\n"
        "om.integrate(s, t, eta=1.0, alpha_max=1000)\n"),
}
TARGETS = {"import onlinemdl": 0.2, "K = M = 2 ODE to alpha = 1000": 0.5}


def cpu_of(code: str) -> float:
    """CPU seconds (user + system) of a fresh ``python -c code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for code in SCRIPTS.values():  # warm the kernel cache and the OS file cache
        cpu_of(code)
    times = {name: [] for name in SCRIPTS}
    for _ in range(args.repeats):  # interleaved, so a busy moment hits every case alike
        for name, code in SCRIPTS.items():
            times[name].append(cpu_of(code))
    print(f"{'process':34s} {'median CPU s':>12s} {'min-max':>13s}  target")
    for name, ts in times.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target:.1f} s: {'met' if statistics.median(ts) <= target else 'NOT met'}"
        print(f"{name:34s} {statistics.median(ts):12.3f} {min(ts):6.3f}-{max(ts):.3f}  {verdict}")


if __name__ == "__main__":
    main()
