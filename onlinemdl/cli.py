"""The ``onlinemdl`` command: ``demo``, ``ode``, ``simulate``, ``scan``, ``plot`` (and ``modenet``).

Errors print one line ``onlinemdl: error: ...`` and exit with status 2; every output is
computed first and then written atomically, so a failed command writes nothing.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import recipes
from ._version import __version__
from .atomic import as_path, atomic_file, check_readable, check_target, open_hdf5, staged_files
from .dynamics import OPTIONS
from .gaussian import ACTIVATIONS
from .recipes import INITS, STUDENTS, TEACHERS, check_params, run_ode, run_simulation
from .runsetup import check_int, check_number, check_seed
from .scan import load_scan, scan
from .sgd import METHODS
from .storage import load_trajectory, object_kind, trajectory_names, write_result
from .trajectory import Trajectory

OUT = "onlinemdl_out"
_ERRORS = (ValueError, OSError, RuntimeError, KeyError, ImportError)


class _Parser(argparse.ArgumentParser):
    """No abbreviated options (a typo must not select another option); one-line errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message, prog=None):
        self.exit(2, f"onlinemdl: error: {message} (see '{prog or self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):
        args, extra = self.parse_known_args(args, namespace)
        command = getattr(args, "command", None)
        if extra:  # point to the help of the command they were given to
            self.error(f"unrecognized arguments: {' '.join(extra)}", f"{self.prog} {command}" if command else None)
        if command is None and hasattr(args, "command"):
            self.error("a command is required")
        return args


# --------------------------------------------------------------------------------------
# Options: the model (onlinemdl.recipes), the dynamics (onlinemdl.dynamics), the run
# --------------------------------------------------------------------------------------
def _names(text):
    return tuple(t.strip() for t in text.split(",") if t.strip())


MODEL_OPTIONS = (
    ("N", int, "input dimension"),
    ("M", int, "teacher hidden units"),
    ("K", int, "student hidden units (default: M)"),
    ("p", int, "modes (default: round(ln N))"),
    ("teacher", TEACHERS, "teacher network"),
    ("student", STUDENTS, "student network; teacher-modes: fresh Xi, the teacher's A and lam (the paper's on-line "
                          "setting)"),
    ("init", INITS, "initial weights of a full student"),
    ("train", _names, "trained factors, comma-separated: of w,v (full) or xi,lam,A,v (modes) "
                      "(default: xi for teacher-modes, w for full, xi,lam,A for modes)"),
    ("teacher-seed", int, "seed of the teacher (an integer >= 0)"),
    ("student-seed", int, "seed of the student (an integer >= 0)"),
)
#: The options of the dynamics, with the help text of onlinemdl.dynamics.Dynamics.
DYNAMICS_OPTIONS = tuple((name.replace("_", "-"), {"batch": int, "activation": tuple(ACTIVATIONS)}.get(name, float),
                          text) for name, (_, text) in OPTIONS.items())
RUN_OPTIONS = (
    ("alpha-max", float, "end time alpha = steps / N"),
    ("points", int, "log-spaced output times (plus alpha = 0)"),
)


def _add_options(parser, run, options):
    defaults = inspect.signature(run).parameters
    for name, kind, text in options:
        dest = name.replace("-", "_")
        default = defaults[dest].default
        kw = dict(choices=kind) if isinstance(kind, tuple) else dict(type=kind, metavar=dest.upper())
        shown = "" if default is None else f" (default: {','.join(default) if isinstance(default, tuple) else default})"
        parser.add_argument(f"--{name}", dest=dest, default=default, help=text + shown, **kw)


def _spec(args, run):
    return {k: getattr(args, k) for k in inspect.signature(run).parameters if hasattr(args, k)}


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
def _check_target(path, hdf5=True):
    """``path`` as a Path, if it can be written: an existing HDF5 file (to update) or a new file in
    a folder that exists or can be created. Checked before any work is done."""
    return check_target(path, "out", hdf5=hdf5, create_parents=True)


def _write(h5=None, objects=None, png=None, figure=None):
    """Write ``objects`` (name -> Trajectory or dict) as groups of ``h5`` (replacing groups of those
    names, keeping the others) and ``figure`` to ``png``, each file atomically; print the paths."""
    written = []
    if h5 is not None:
        h5.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(h5) as f:
            for name, obj in objects.items():
                if name in f:
                    del f[name]
                write_result(f.create_group(name), obj)
        written.append(h5)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        with staged_files(png) as (tmp,):
            figure.savefig(tmp, dpi=120)
        written.append(png)
    for path in written:
        print(f"wrote {path}")


def _figure(trajs, labels=None, plateaus=False, title=""):
    from .plotting import plot_eps_g
    fig = plot_eps_g(trajs, labels=labels, plateaus=plateaus)
    fig.axes[0].set_title(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------
@contextmanager
def _progress(quiet, desc, total):
    """A tqdm bar over the stages of a command, on a terminal only (never with --quiet or when
    stderr is not a TTY); its clock ticks while a stage runs. Yields ``step(text)``, which marks
    the previous stage done and names the next one."""
    from tqdm import tqdm
    enabled = not quiet and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    bar = tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False,
               bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} stages [{elapsed}]")
    stop = threading.Event()
    ticker = None
    if enabled:
        def tick():
            while not stop.wait(0.5):
                bar.refresh()
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    started = [False]

    def step(text):
        if started[0]:
            bar.update()
        started[0] = True
        bar.set_description_str(f"{desc}: {text}")

    try:
        yield step
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        bar.close()


def _check_run_args(run, spec):
    try:
        check_params(run, spec)
    except TypeError as err:
        raise ValueError(str(err)) from None


def cmd_demo(args):
    out = as_path(args.out, "out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} is not a directory")
    h5, png = _check_target(out / "demo.h5"), _check_target(out / "demo.png", hdf5=False)
    check_number("alpha_max", args.alpha_max, 0.0, strict=True)
    check_number("eta", args.eta, 0.0, strict=True)
    check_int("replicas", args.replicas)
    check_seed("seed", args.seed)
    if args.threads is not None:
        check_int("threads", args.threads)
    common = dict(eta=args.eta, alpha_max=args.alpha_max)
    with _progress(args.quiet, "demo", 4) as step:
        step("ODE")
        ode = run_ode(**common)
        p = ode.params
        _say(f"onlinemdl demo: N={p['N']}, M=K={p['K']}, p={p['p']} modes, student trains {','.join(p['train'])}, "
             f"eta={p['eta']:g}, alpha up to {args.alpha_max:g}")
        _say(f"ODE:        {ode.summary()}")
        step(f"SGD, {args.replicas} replicas")
        sim = run_simulation(**common, replicas=args.replicas, seed=args.seed, method=args.method, threads=args.threads)
        _say(f"simulation: {sim.summary()}")
        step("plateaus")
        from .analysis import find_plateaus
        plateaus = find_plateaus(ode)
        _say(f"ODE stages: {plateaus.summary()}")
        step("figure")
        fig = _figure([ode, sim], plateaus=plateaus,
                      title=f"N={p['N']}, M=K={p['K']}, p={p['p']}, eta={p['eta']:g}: ODE and SGD, stages shaded")
    table = {k: np.array([getattr(q, k) for q in plateaus.features]) for k in ("start", "end", "level", "slope", "depth")}
    table["kind"] = np.array([q.kind for q in plateaus.features])
    _write(h5, {"ode": ode, "sim": sim, "plateaus": table}, png, fig)


def _say(text):
    print(text, flush=True)


def _run_and_write(args, run, name, group, what):
    """``ode`` and ``simulate``: check the target and the arguments, run, print the summary, write.
    ``what(args)`` describes the run for the progress bar (called once the arguments are checked)."""
    out = _check_target(args.out)
    spec = _spec(args, run)
    _check_run_args(getattr(recipes, run.__name__), spec)  # the recipe's own checks, before any work
    with _progress(args.quiet, name, 1) as step:
        step(what(args))
        traj = run(**spec)
    print(f"{name}: {traj.summary()}")
    if traj.eps_g_sd is not None:
        valid = traj.fluct_valid_until
        print(f"finite-N theory at N = {traj.params['N']}: one run's eps_g at alpha = {traj.alpha[-1]:.3g} is "
              f"{traj.eps_g[-1] + traj.eps_g_bias[-1]:.3g} +- {traj.eps_g_sd[-1]:.2g} (sd); "
              + ("valid throughout" if valid == np.inf else f"valid until alpha = {valid:.3g}"))
    _write(out, {group: traj})


def cmd_ode(args):
    _run_and_write(args, run_ode, "ode", "ode", lambda a: f"integrating to alpha = {a.alpha_max:g}")


def cmd_simulate(args):
    _run_and_write(args, run_simulation, "simulate", "sim",
                   lambda a: f"{a.replicas} replicas to alpha = {a.alpha_max:g}")


#: Keys of a scan config: name -> (Python types, what it must be).
CONFIG_KEYS = {
    "run": ((str,), 'a string: "ode", "simulate" or "package.module:function"'),
    "store": ((str,), "a string (a path, relative to the config file)"),
    "workers": ((int,), "an integer >= 1"),
    "scheduler": ((str,), "a string (a dask scheduler address)"),
    "fixed": ((dict,), "a table [fixed] of parameters"),
    "grid": ((dict,), "a table [grid] of lists of values"),
    "points": ((list,), "an array of tables [[points]]"),
}


def _load_config(path):
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    path = as_path(path, "config")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a TOML file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: {err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a TOML file (not UTF-8 text)") from None
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    for key, value in config.items():
        types, wanted = CONFIG_KEYS[key]
        if not isinstance(value, types) or isinstance(value, bool) or (key == "workers" and value < 1) or (
                key in ("store", "run") and not value):
            raise ValueError(f"{path}: {key} must be {wanted}, got {_toml_repr(value)}")
    if ("grid" in config) == ("points" in config):
        raise ValueError(f"{path}: give either a [grid] table (Cartesian product) or [[points]] (explicit points)")
    for name, values in config.get("grid", {}).items():
        if not isinstance(values, list):
            raise ValueError(f"{path}: grid.{name} must be a list of values, got {_toml_repr(values)}")
    for i, point in enumerate(config.get("points", [])):
        if not isinstance(point, dict):
            raise ValueError(f"{path}: points[{i}] must be a table [[points]], got {_toml_repr(point)}")
    return config


def _toml_repr(value) -> str:
    kind = {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) < 40 else text[:37] + '...'}"


def _resolve_run(name):
    if name in ("ode", "simulate"):
        return run_ode if name == "ode" else run_simulation
    module, _, func = str(name).partition(":")
    if not func:
        raise ValueError(f'run must be "ode", "simulate" or "package.module:function", got {name!r}')
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"run: cannot import {name!r} ({err})") from None


def cmd_scan(args):
    config = _load_config(args.config)
    run = _resolve_run(config.get("run", "ode"))
    store = as_path(args.store, "store") if args.store is not None else \
        Path(args.config).parent / config.get("store", "scan.h5")
    check_target(store, "store", create_parents=True)
    workers = config.get("workers") if args.workers is None else check_int("workers", args.workers)
    scheduler = config.get("scheduler") if args.scheduler is None else args.scheduler
    grid = config.get("grid", config.get("points"))
    client = None
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError("scheduler needs dask.distributed (pip install 'onlinemdl[dask]')") from None
        client = Client(scheduler)
    try:
        res = scan(grid, run=run, store=store, fixed=config.get("fixed"), executor=client, workers=workers,
                   progress=not args.quiet)
    finally:
        if client is not None:
            client.close()
    print(f"scan: {res.done.size} points ({res.computed} computed, {res.done.size - res.computed} already stored) "
          f"in {store}")
    if res.done.size <= args.show:
        for idx in np.ndindex(res.shape):
            print(f"  {_label(res, idx)}: {_outcome(res.result(*idx))}")


def _label(res, idx) -> str:
    return " ".join(f"{k}={v}" for k, v in res.points[idx].items() if k not in res.fixed)


def _outcome(result) -> str:
    """One-line account of a scan point's result."""
    if not isinstance(result, Trajectory):
        return ", ".join(f"{k}={v}" for k, v in result.items() if np.ndim(v) == 0)
    eps = result.mean().eps_g
    finite = np.flatnonzero(np.isfinite(eps))
    if finite.size == 0:
        return f"{result.status}, no finite eps_g"
    if finite[-1] == eps.size - 1:
        return f"{result.status}, final eps_g {eps[-1]:.3g}"
    return f"{result.status}, eps_g {eps[finite[-1]]:.3g} at alpha = {result.alpha[finite[-1]]:.3g} (last finite)"


def cmd_plot(args):
    path = check_readable(args.file)
    png = _check_target(Path(args.out) if args.out else path.with_suffix(".png"), hdf5=False)
    with open_hdf5(path, what="file") as f:
        kind = object_kind(f)
        names = [] if kind in ("scan", "Trajectory") else trajectory_names(f)
    if kind == "scan":
        res = load_scan(path)
        done = list(zip(*res.done.nonzero()))
        trajs = [res.result(*i) for i in done]
        if not trajs or any(isinstance(t, dict) for t in trajs):
            raise ValueError(f"{path}: the scan holds no trajectories to plot")
        fig = _figure(trajs, labels=[_label(res, i) for i in done], title=f"{path.name}: {res.run}")
    else:
        pairs = [(path.stem, load_trajectory(path))] if kind == "Trajectory" else \
            [(n, load_trajectory(path, n)) for n in names]
        if not pairs:
            raise ValueError(f"{path}: holds no trajectory")
        pairs.sort(key=lambda nt: nt[1].kind != "ode")  # an ODE first: its plateaus are shaded
        trajs = [t for _, t in pairs]
        kinds_differ = len({t.kind for t in trajs}) == len(trajs)
        fig = _figure(trajs, labels=None if kinds_differ else [n for n, _ in pairs], plateaus=trajs[0].kind == "ode",
                      title=path.name)
    _write(png=png, figure=fig)


# --------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------
FORMAT = argparse.RawDescriptionHelpFormatter


def _para(text: str) -> str:
    return textwrap.fill(text, 88)


def build_parser() -> argparse.ArgumentParser:
    """The ``onlinemdl`` argument parser."""
    parser = _Parser(prog="onlinemdl", formatter_class=FORMAT,
                     description=_para("On-line learning dynamics of mode decomposition learning: ODEs, SGD simulations, "
                                 "scans and figures.\nWithout a command, runs 'demo'."),
                     epilog="Each command has its own --help, e.g. 'onlinemdl ode --help'.")
    parser.add_argument("--version", action="version", version=f"onlinemdl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", formatter_class=FORMAT, help="the paper's on-line setting: ODE and SGD side by side",
                       description=_para("ODE and SGD simulation of the paper's on-line setting side by side: mode teacher "
                                   "with N=30, M=8, p=round(ln N)=3 modes; the student has the teacher's A and lam and "
                                   "learns Xi from a random start; eta=5. Writes OUT/demo.h5 (groups 'ode' and 'sim') "
                                   "and OUT/demo.png."),
                       epilog="example: onlinemdl demo --alpha-max 1e3 --replicas 2")
    d.add_argument("--alpha-max", type=float, default=1e5, metavar="ALPHA", help="end time (default: 1e5)")
    d.add_argument("--eta", type=float, default=5.0, help="learning rate (default: 5)")
    d.add_argument("--replicas", type=int, default=4, help="SGD replicas (default: 4)")
    d.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help=f"SGD engine: gram (exact reduced chain, cost independent of N) or explicit (default: "
                        f"{METHODS[0]})")
    d.add_argument("--seed", type=int, default=0, help="seed of the SGD input streams (default: 0)")
    d.add_argument("--threads", type=int, default=None, help="SGD threads (default: all cores)")
    d.add_argument("--out", default=OUT, help=f"output directory, created if needed (default: {OUT})")
    d.add_argument("--quiet", action="store_true", help="no progress bar (there is none either when stderr is not "
                                                          "a terminal)")
    d.set_defaults(func=cmd_demo)

    o = sub.add_parser("ode", formatter_class=FORMAT, help="integrate the order-parameter ODEs",
                       description=_para("Integrate the order-parameter ODEs of one teacher-student model and store the "
                                   "trajectory as the group 'ode' of --out (other groups of the file are kept)."),
                       epilog="example: onlinemdl ode --N 100 --eta 2 --alpha-max 1e4 --out run.h5")
    _add_options(o, run_ode, MODEL_OPTIONS + DYNAMICS_OPTIONS + RUN_OPTIONS)
    o.add_argument("--method", default="auto", help="auto (LSODA), a scipy solve_ivp method (Radau, BDF, RK45, DOP853) "
                                                     "or euler (default: auto)")
    o.add_argument("--fluctuations", choices=("fixed", "fresh"), default=False,
                   help="add the finite-N theory at N (theory/finite_size.md): the predicted spread and bias of SGD "
                        "runs started from these very networks (fixed) or from freshly drawn ones (fresh); 'plot' "
                        "draws the band of single runs (default: off)")
    o.add_argument("--out", default=f"{OUT}/ode.h5", help=f"HDF5 file (default: {OUT}/ode.h5)")
    o.add_argument("--quiet", action="store_true", help="no progress bar (there is none either when stderr is not "
                                                          "a terminal)")
    o.set_defaults(func=cmd_ode)

    s = sub.add_parser("simulate", formatter_class=FORMAT, help="on-line SGD simulation",
                       description=_para("Simulate on-line SGD of one teacher-student model (replicas in parallel) and "
                                   "store the trajectory as the group 'sim' of --out (other groups are kept)."),
                       epilog="example: onlinemdl simulate --alpha-max 1e3 --replicas 8 --out run.h5")
    _add_options(s, run_simulation, MODEL_OPTIONS + DYNAMICS_OPTIONS + RUN_OPTIONS)
    s.add_argument("--replicas", type=int, default=4, help="independent replicas (default: 4)")
    s.add_argument("--seed", type=int, default=0, help="seed of the input streams (default: 0)")
    s.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help=f"SGD engine: gram (exact reduced chain, cost independent of N) or explicit (default: "
                        f"{METHODS[0]})")
    s.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    s.add_argument("--test-set", type=int, default=0, metavar="SIZE",
                   help="held-out Gaussian inputs per replica on which the error is also measured (explicit "
                        "method only; default: 0, none)")
    s.add_argument("--out", default=f"{OUT}/simulate.h5", help=f"HDF5 file (default: {OUT}/simulate.h5)")
    s.add_argument("--quiet", action="store_true", help="no progress bar (there is none either when stderr is not "
                                                          "a terminal)")
    s.set_defaults(func=cmd_simulate)

    c = sub.add_parser("scan", formatter_class=FORMAT, help="parameter scan from a TOML file (resumable)",
                       description=_para("Run a parameter scan described by a TOML file, in parallel, into an HDF5 store. "
                                   "Rerunning skips the points already stored."),
                       epilog=SCAN_EPILOG)
    c.add_argument("config", help="TOML file")
    c.add_argument("--store", help="HDF5 store (default: the config's 'store', relative to the config file, "
                                   "else scan.h5 next to it)")
    c.add_argument("--workers", type=int, help="local worker processes (default: the config's, else all cores)")
    c.add_argument("--scheduler", metavar="ADDRESS", help="run on a dask.distributed scheduler, e.g. tcp://host:8786")
    c.add_argument("--show", type=int, default=20, metavar="N", help="list every point's result if at most N "
                                                                     "(default: 20)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_scan)

    pl = sub.add_parser("plot", formatter_class=FORMAT, help="figure of eps_g from an HDF5 file",
                        description=_para("Plot eps_g against alpha from a file written by demo, ode, simulate, scan or "
                                    "onlinemdl.save_trajectory (ODE and simulation side by side, plateaus marked where "
                                    "onlinemdl.analysis is available)."),
                        epilog="example: onlinemdl plot onlinemdl_out/demo.h5")
    pl.add_argument("file", help="HDF5 file")
    pl.add_argument("--out", help="PNG file (default: FILE with suffix .png)")
    pl.set_defaults(func=cmd_plot)

    try:
        from .modenet.cli import add_subparser
    except ImportError:
        pass
    else:
        add_subparser(sub)
    return parser


SCAN_EPILOG = """\
config format:
  run = "ode"            # "ode", "simulate" or "package.module:function" (default "ode")
  store = "scan.h5"      # relative to the config file
  workers = 2            # optional
  [fixed]                # parameters of every point (options of 'onlinemdl ode --help', with _)
  N = 30
  alpha_max = 1000.0
  [grid]                 # Cartesian product of these lists ...
  eta = [1.0, 2.0, 5.0]
  # ... or explicit points instead of [grid]:
  # [[points]]
  # eta = 1.0
  # K = 4
example: onlinemdl scan scan.toml --workers 4"""


def main(argv=None) -> int:
    """Entry point of the ``onlinemdl`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv or ["demo"])
    try:
        return args.func(args) or 0
    except _ERRORS as err:
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"onlinemdl: error: {text}", file=sys.stderr)
        return 2
