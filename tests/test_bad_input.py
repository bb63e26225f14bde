"""Bad-input suite (issue 10): malformed arguments, configs and files through the public API,
the command line and the readers.

Each *kind* of bad input (a target, one of its parameters, one class of bad value) is one test
case; Hypothesis draws a few values of the class (derandomized: the same values on every run).
Every time, the API must raise ValueError, TypeError or FileNotFoundError (PermissionError for an
unwritable folder) whose message names the parameter or the user's path, and write nothing; the
command line must exit 2 with one line ``onlinemdl: error: ...``, no traceback, nothing written.
"""
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import onlinemdl as om
from onlinemdl.cli import main
from onlinemdl.recipes import run_ode, run_simulation
from onlinemdl.scan import load_scan, scan
from onlinemdl.storage import load_trajectory, save_trajectory
from onlinemdl.trajectory import Trajectory

SETTINGS = settings(max_examples=3, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError)

# ---- classes of bad values -------------------------------------------------------------
texts = st.text(max_size=4).filter(lambda t: t.strip() not in ("erf", "linear"))
NUMBER_TYPE = st.one_of(texts, st.lists(st.integers(), max_size=2), st.complex_numbers(allow_nan=False).filter(
    lambda z: z.imag != 0), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
CLASSES = {
    "negative": st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False) | st.integers(max_value=-1),
    "zero": st.sampled_from([0, 0.0, -0.0]),
    "nan": st.just(math.nan),
    "infinite": st.sampled_from([math.inf, -math.inf]),
    "string": texts,
    "bool": st.booleans(),
    "container": NUMBER_TYPE,
    "none": st.none(),
    "fraction": st.floats(min_value=0.01, max_value=1e6, allow_nan=False).filter(lambda x: x != int(x)),
    "choice-text": st.text(min_size=0, max_size=6).filter(lambda t: t not in (
        "erf", "linear", "modes", "random", "orthonormal", "teacher-modes", "full", "large", "small", "informed",
        "auto", "euler", "RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA", "gram", "explicit", "fixed", "fresh")),
    "choice-number": st.integers() | st.floats(allow_nan=False),
}

INT = ("negative", "zero", "fraction", "nan", "string", "bool", "container")
INT_OPT = ("negative", "zero", "fraction", "string", "bool")
INT0 = ("negative", "fraction", "string", "bool")
POS = ("negative", "zero", "nan", "infinite", "string", "bool", "container", "none")
NONNEG = ("negative", "nan", "infinite", "string", "bool", "container")
NONNEG_OPT = ("negative", "nan", "infinite", "string", "bool")
CHOICE = ("choice-text", "choice-number", "none")
SEED = ("negative", "fraction", "string", "bool", "nan")
FLAG = ("string", "container", "none", "choice-number")

FAST = dict(N=10, M=2, teacher="random", student="full", alpha_max=2.0, points=4)
RUN_PARAMS = {"N": INT, "M": INT, "K": INT_OPT, "p": INT_OPT, "points": INT, "batch": INT,
              "teacher_seed": SEED, "student_seed": SEED, "eta": POS, "max_norm": POS, "alpha_max": POS,
              "sigma": NONNEG, "weight_decay": NONNEG, "eta_lam": NONNEG_OPT, "eta_A": NONNEG_OPT,
              "eta_v": NONNEG_OPT, "teacher": CHOICE, "student": CHOICE, "init": CHOICE, "activation": CHOICE,
              "method": CHOICE}
SIM_PARAMS = {"replicas": INT, "seed": SEED + ("none",), "threads": INT_OPT, "test_set": INT0, "method": CHOICE}


def _cases():
    cases = []
    for name, classes in RUN_PARAMS.items():
        for c in classes:
            cases.append(("run_ode", name, c))
    cases += [("run_ode", "fluctuations", c) for c in CHOICE]
    cases += [(target, "covariance", c) for target in ("run_ode", "integrate") for c in FLAG]
    for name, classes in {**{k: v for k, v in RUN_PARAMS.items() if k not in ("method",)}, **SIM_PARAMS}.items():
        for c in classes:
            if name in ("N", "M", "K", "p", "teacher", "student", "init", "points") and c not in ("negative", "string"):
                continue  # the same check as run_ode's; two classes suffice
            cases.append(("run_simulation", name, c))
    for name, classes in {"eta": POS, "alpha_max": POS, "rtol": POS[:5], "atol": POS[:5], "points": INT,
                          "max_norm": POS[:4], "method": CHOICE, "eta_lam": NONNEG_OPT[:3], "fluctuations": CHOICE}.items():
        for c in classes:
            cases.append(("integrate", name, c))
    for name, classes in {"eta": POS[:4], "replicas": INT[:4], "seed": SEED, "threads": INT_OPT[:3],
                          "test_set": INT0[:2], "method": CHOICE[:2]}.items():
        for c in classes:
            cases.append(("simulate", name, c))
    for target, params in {"Teacher.random": {"N": INT[:4], "M": INT[:4], "seed": SEED},
                           "Teacher.modes": {"N": ("negative", "zero", "fraction"), "p": INT_OPT[:3],
                                             "a": POS[:5], "sigma": NONNEG[:4], "activation": CHOICE[:2]},
                           "Student.full": {"N": INT[:3], "K": INT[:3], "init": CHOICE[:2], "scale": POS[:4],
                                            "seed": SEED[:3], "weight_decay": NONNEG[:3], "batch": INT[:3]},
                           "Student.modes": {"p": INT[:3], "seed": SEED[:2]}}.items():
        for name, classes in params.items():
            for c in classes:
                cases.append((target, name, c))
    return cases


CASES = _cases()


def _call(target, name, value):
    teacher = om.Teacher.random(10, 2, seed=0)
    student = om.Student.full(10, 2, seed=1)
    if target == "run_ode":
        return run_ode(**{**FAST, name: value})
    if target == "run_simulation":
        return run_simulation(**{**FAST, "replicas": 1, "threads": 1, name: value})
    if target == "integrate":
        return om.integrate(student, teacher, **{"eta": 1.0, "alpha_max": 1.0, "points": 4, name: value})
    if target == "simulate":
        return om.simulate(student, teacher, **{"eta": 1.0, "alpha_max": 1.0, "points": 4, name: value})
    cls, _, ctor = target.partition(".")
    base = {"Teacher.random": dict(N=10, M=2), "Teacher.modes": dict(N=10, M=2),
            "Student.full": dict(N=10, K=2), "Student.modes": dict(N=10, K=2, p=2)}[target]
    return getattr(getattr(om, cls), ctor)(**{**base, name: value})


def _expect_error(fn, *names):
    try:
        result = fn()
    except ERRORS as err:
        text = str(err)
        assert any(n in text for n in names), f"{type(err).__name__}: {text!r} does not name {names}"
        assert "Traceback" not in text
        return
    raise AssertionError(f"accepted, returned {result!r:.200}")


@pytest.mark.parametrize("target, name, kind", CASES, ids=[f"{t}-{n}-{k}" for t, n, k in CASES])
def test_api_parameter(target, name, kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @SETTINGS
    @given(CLASSES[kind])
    def check(value):
        _expect_error(lambda: _call(target, name, value), name)

    check()
    assert list(tmp_path.iterdir()) == []


# ---- files: storage, scan stores, configs ---------------------------------------------------
def _traj(n=3):
    return Trajectory(alpha=np.arange(n, dtype=float), steps=np.arange(n), eps_g=np.ones(n), Q=np.ones((n, 1, 1)),
                      R=np.ones((n, 1, 1)), T=np.eye(1))


def _make(tmp_path, kind):
    """A bad file or path of ``kind``, created in ``tmp_path``; returns the path (or a non-path)."""
    if kind == "directory":
        (tmp_path / "adir").mkdir()
        return tmp_path / "adir"
    if kind == "missing":
        return tmp_path / "missing.h5"
    if kind == "missing-folder":
        return tmp_path / "nowhere" / "x.h5"
    if kind == "parent-is-file":
        (tmp_path / "plain").write_text("x")
        return tmp_path / "plain" / "x.h5"
    if kind == "text":
        (tmp_path / "notes.h5").write_text("hello")
        return tmp_path / "notes.h5"
    if kind == "empty-file":
        (tmp_path / "empty.h5").write_bytes(b"")
        return tmp_path / "empty.h5"
    if kind == "truncated":
        save_trajectory(_traj(50), tmp_path / "full.h5")
        data = (tmp_path / "full.h5").read_bytes()
        (tmp_path / "full.h5").unlink()
        (tmp_path / "trunc.h5").write_bytes(data[:1200])
        return tmp_path / "trunc.h5"
    if kind == "signature-only":
        (tmp_path / "sig.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
        return tmp_path / "sig.h5"
    if kind == "foreign-hdf5":
        import h5py
        with h5py.File(tmp_path / "foreign.h5", "w") as f:
            f["x"] = np.arange(3)
        return tmp_path / "foreign.h5"
    if kind == "empty-string":
        return ""
    if kind == "int":
        return 5
    if kind == "none":
        return None
    if kind == "nul":
        return "a\0b.h5"
    raise KeyError(kind)


WRITE_TARGETS = ("directory", "missing-folder", "parent-is-file", "text", "empty-file", "truncated",
                 "signature-only", "empty-string", "int", "none", "nul")
READ_SOURCES = ("directory", "missing", "text", "empty-file", "truncated", "signature-only", "foreign-hdf5",
                "empty-string", "int", "nul")
FILE_CASES = [("save_trajectory", k) for k in WRITE_TARGETS] + [("load_trajectory", k) for k in READ_SOURCES] + \
    [("scan-store", k) for k in WRITE_TARGETS + ("foreign-hdf5",) if k != "missing-folder"] + \
    [("load_scan", k) for k in READ_SOURCES]


def _named(path):
    return (str(path),) if isinstance(path, (str, os.PathLike)) and str(path) else ("target", "source", "store", "path")


@pytest.mark.parametrize("target, kind", FILE_CASES, ids=[f"{t}-{k}" for t, k in FILE_CASES])
def test_files(target, kind, tmp_path):
    path = _make(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    if target == "save_trajectory":
        _expect_error(lambda: save_trajectory(_traj(), path), *_named(path), "target")
    elif target == "load_trajectory":
        _expect_error(lambda: load_trajectory(path), *_named(path), "source")
    elif target == "scan-store":
        from concurrent.futures import ThreadPoolExecutor
        _expect_error(lambda: scan({"eta": [1.0]}, store=path, fixed=FAST, executor=ThreadPoolExecutor(1),
                                   progress=False), *_named(path), "store")
    else:
        _expect_error(lambda: load_scan(path), *_named(path), "store")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


NAMES = {"empty": "", "absolute": "/a", "trailing": "a/", "double": "a//b", "hidden": ".a", "dot": "a/./b",
         "int": 3, "none-on-save": None, "list": ["a"]}


@pytest.mark.parametrize("kind", list(NAMES) + ["overwrite-str", "overwrite-int", "traj-dict", "traj-none",
                                                "present", "load-missing-name", "load-name-int"])
def test_trajectory_names_and_arguments(kind, tmp_path):
    path = tmp_path / "t.h5"
    save_trajectory(_traj(), path, name="run")
    size = path.stat().st_size
    if kind in NAMES:
        _expect_error(lambda: save_trajectory(_traj(), path, name=NAMES[kind]), "name")
    elif kind.startswith("overwrite"):
        _expect_error(lambda: save_trajectory(_traj(), path, name="x", overwrite="yes" if "str" in kind else 1),
                      "overwrite")
    elif kind.startswith("traj"):
        _expect_error(lambda: save_trajectory({} if "dict" in kind else None, path, name="x"), "traj")
    elif kind == "present":
        _expect_error(lambda: save_trajectory(_traj(), path, name="run"), str(path))
    elif kind == "load-missing-name":
        _expect_error(lambda: load_trajectory(path, name="nope"), "name")
    else:
        _expect_error(lambda: load_trajectory(path, name=1), "name")
    assert path.stat().st_size == size and sorted(p.name for p in tmp_path.iterdir()) == ["t.h5"]


SCAN_ARGS = {
    "grid-scalar": dict(grid=1.0), "grid-empty-dict": dict(grid={}), "grid-empty-list": dict(grid=[]),
    "grid-not-list": dict(grid={"eta": 1.0}), "grid-empty-axis": dict(grid={"eta": []}),
    "grid-repeat": dict(grid={"eta": [1.0, 1.0]}), "grid-object": dict(grid={"eta": [object()]}),
    "points-repeat": dict(grid=[{"eta": 1.0}, {"eta": 1.0}]), "points-not-dicts": dict(grid=[1, 2]),
    "fixed-overlap": dict(fixed={**FAST, "eta": 2.0}), "fixed-list": dict(fixed=[1, 2]),
    "workers-zero": dict(workers=0), "workers-float": dict(workers=1.5), "workers-str": dict(workers="2"),
    "workers-bool": dict(workers=True), "workers-with-executor": dict(workers=2, executor="threads"),
    "progress-str": dict(progress="yes"), "run-lambda": dict(run=lambda eta: eta), "run-not-callable": dict(run=3),
    "unknown-parameter": dict(grid={"etta": [1.0]}), "eta-string": dict(grid={"eta": ["5"]}),
    "eta-negative": dict(grid={"eta": [-1.0]}), "alpha-max-string": dict(fixed={**FAST, "alpha_max": "1e4"}),
    "N-float": dict(fixed={**FAST, "N": 10.5}), "method-unknown": dict(fixed={**FAST, "method": "foo"}),
    "train-unknown": dict(fixed={**FAST, "train": ["q"]}),
}


@pytest.mark.parametrize("kind", list(SCAN_ARGS))
def test_scan_arguments(kind, tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    args = {"grid": {"eta": [1.0]}, "fixed": FAST, "store": tmp_path / "s.h5", "progress": False, **SCAN_ARGS[kind]}
    if args.get("executor") == "threads":
        args["executor"] = ThreadPoolExecutor(1)
    words = {"grid", "fixed", "workers", "progress", "run", "eta", "etta", "alpha_max", "N", "method", "train"}
    try:
        scan(**args)
    except (ValueError, TypeError, RuntimeError) as err:
        assert any(w in str(err) for w in words), str(err)
        if isinstance(err, RuntimeError):  # only a run failing in a worker may be a RuntimeError
            assert kind == "train-unknown" and "run failed at" in str(err) and "train" in str(err)
    else:
        raise AssertionError("accepted")
    assert [p.name for p in tmp_path.iterdir()] == []


TRAJ_CALLS = {"at-nan": ("at", math.nan), "at-inf": ("at", math.inf), "at-str": ("at", "1"), "at-none": ("at", None),
              "at-list": ("at", [1.0]), "replica-negative": ("replica", -1), "replica-large": ("replica", 9),
              "replica-float": ("replica", 0.5), "replica-str": ("replica", "0")}


@pytest.mark.parametrize("kind", list(TRAJ_CALLS))
def test_trajectory_methods(kind):
    traj = _traj()
    traj.eps_g = np.ones((2, 3))
    traj.Q, traj.R = np.ones((2, 3, 1, 1)), np.ones((2, 3, 1, 1))
    method, value = TRAJ_CALLS[kind]
    _expect_error(lambda: getattr(traj, method)(value), "alpha" if method == "at" else "replica")


MODEL_CASES = {
    "W-nan": lambda: om.Student(W=np.full((2, 3), np.nan)), "W-1d": lambda: om.Student(W=np.ones(3)),
    "W-strings": lambda: om.Student(W=[["a", "b"]]), "Xi-shape": lambda: om.Student(A=np.ones((2, 2)), lam=np.ones(2),
                                                                                  Xi=np.ones((5, 3))),
    "A-shape": lambda: om.Student(A=np.ones((2, 3)), lam=np.ones(2), Xi=np.ones((5, 2))),
    "W-and-modes": lambda: om.Student(W=np.ones((2, 3)), Xi=np.ones((3, 1))),
    "v-length": lambda: om.Student(W=np.ones((2, 3)), v=[1.0, 2.0, 3.0]), "v-nan": lambda: om.Student(W=np.ones((2, 3)),
                                                                                                    v=np.nan),
    "train-empty": lambda: om.Student(W=np.ones((2, 3)), train=()), "train-unknown": lambda: om.Student(
        W=np.ones((2, 3)), train=("xi",)),
    "train-repeat": lambda: om.Student(W=np.ones((2, 3)), train=("w", "w")),
    "teacher-modes-empty-train": lambda: om.Student.from_teacher_modes(om.Teacher.modes(10, 2, seed=0), train=()),
    "from-teacher-modes-not-modes": lambda: om.Student.from_teacher_modes(om.Teacher.random(10, 2, seed=0)),
    "B-nan": lambda: om.Teacher(B=np.full((2, 3), np.nan)), "B-1d": lambda: om.Teacher(B=np.ones(3)),
    "vt-length": lambda: om.Teacher(B=np.ones((2, 3)), vt=[1, 2, 3]),
    "orthonormal-M-gt-N": lambda: om.Teacher.orthonormal(2, 3),
    "informed-no-teacher": lambda: om.Student.full(10, 2, init="informed"),
    "overlap-range": lambda: om.Student.full(10, 2, init="informed", teacher=om.Teacher.random(10, 2), overlap=2.0),
    "N-mismatch": lambda: om.integrate(om.Student.full(10, 2), om.Teacher.random(11, 2), eta=1.0, alpha_max=1.0),
    "activation-mismatch": lambda: om.integrate(om.Student.full(10, 2, activation="linear"), om.Teacher.random(10, 2),
                                                eta=1.0, alpha_max=1.0),
    "alpha-and-alpha-max": lambda: om.integrate(om.Student.full(10, 2), om.Teacher.random(10, 2), eta=1.0,
                                                alpha_max=1.0, alpha=[0.0, 1.0]),
    "alpha-decreasing": lambda: om.integrate(om.Student.full(10, 2), om.Teacher.random(10, 2), eta=1.0,
                                             alpha=[1.0, 0.5]),
    "alpha-negative": lambda: om.simulate(om.Student.full(10, 2), om.Teacher.random(10, 2), eta=1.0, alpha=[-1.0, 1.0]),
    "alpha-nan": lambda: om.simulate(om.Student.full(10, 2), om.Teacher.random(10, 2), eta=1.0, alpha=[0.0, np.nan]),
    "alpha-empty": lambda: om.integrate(om.Student.full(10, 2), om.Teacher.random(10, 2), eta=1.0, alpha=[]),
    "alpha-strings": lambda: om.integrate(om.Student.full(10, 2), om.Teacher.random(10, 2), eta=1.0, alpha=["a"]),
    "no-time": lambda: om.integrate(om.Student.full(10, 2), om.Teacher.random(10, 2), eta=1.0),
    "test-set-gram": lambda: om.simulate(om.Student.full(10, 2), om.Teacher.random(10, 2), eta=1.0, alpha_max=1.0,
                                         test_set=5, method="gram"),
    "teacher-not-teacher": lambda: om.integrate(om.Student.full(10, 2), "teacher", eta=1.0, alpha_max=1.0),
}
MODEL_WORDS = {"W-nan": "W", "W-1d": "W", "W-strings": "W", "Xi-shape": "Xi", "A-shape": "A", "W-and-modes": "W",
               "v-length": "v", "v-nan": "v", "B-nan": "B", "B-1d": "B", "vt-length": "vt", "orthonormal-M-gt-N": "M",
               "informed-no-teacher": "teacher", "overlap-range": "overlap", "N-mismatch": "N",
               "activation-mismatch": "activation", "from-teacher-modes-not-modes": "teacher",
               "test-set-gram": "test_set", "teacher-not-teacher": "teacher"}


@pytest.mark.parametrize("kind", list(MODEL_CASES))
def test_model_and_engine_arguments(kind):
    word = MODEL_WORDS.get(kind, "alpha" if kind.startswith(("alpha", "no-time")) else "train")
    _expect_error(MODEL_CASES[kind], word)


# ---- the command line ---------------------------------------------------------------------
TINY = ["--N", "10", "--M", "2", "--teacher", "random", "--student", "full", "--alpha-max", "2", "--points", "4"]
CLI_OPTIONS = {"ode": {"--N": INT[:3], "--M": INT[:3], "--K": ("negative", "zero"), "--p": ("negative",),
                       "--points": ("negative", "zero"), "--batch": ("negative", "zero", "fraction"),
                       "--teacher-seed": ("negative", "fraction"), "--student-seed": ("negative",),
                       "--eta": ("negative", "zero", "nan", "infinite", "string"), "--eta-lam": ("negative", "nan"),
                       "--eta-A": ("negative",), "--eta-v": ("infinite",), "--sigma": ("negative", "nan"),
                       "--weight-decay": ("negative", "infinite"), "--max-norm": ("zero", "nan"),
                       "--alpha-max": ("negative", "zero", "nan", "string"), "--method": ("choice-text",),
                       "--teacher": ("choice-text",), "--activation": ("choice-text",), "--train": ("choice-text",),
                       "--out": ("directory", "text", "truncated", "parent-is-file", "empty-string")},
               "simulate": {"--replicas": ("negative", "zero", "fraction"), "--seed": ("negative", "fraction"),
                            "--threads": ("negative", "zero"), "--test-set": ("negative",), "--method": ("choice-text",),
                            "--eta": ("zero",), "--out": ("directory", "signature-only")},
               "demo": {"--replicas": ("zero", "negative"), "--threads": ("zero",), "--seed": ("negative",),
                        "--eta": ("zero", "nan"), "--alpha-max": ("negative",), "--method": ("choice-text",),
                        "--out": ("text",)},
               "plot": {"file": ("directory", "missing", "text", "truncated", "signature-only", "foreign-hdf5",
                                 "empty-string")},
               "scan": {"config": ("directory", "missing", "text-toml", "binary"), "--workers": ("zero", "fraction"),
                        "--store": ("directory", "truncated", "foreign-hdf5")}}
CLI_CASES = [(c, o, k) for c, opts in CLI_OPTIONS.items() for o, kinds in opts.items() for k in kinds]
CLI_VALUES = {"negative": st.integers(-10**6, -1).map(str), "zero": st.sampled_from(["0", "0.0", "-0"]),
              "fraction": st.sampled_from(["1.5", "2.25", "1e-3"]), "nan": st.sampled_from(["nan", "NaN"]),
              "infinite": st.sampled_from(["inf", "-inf", "1e999"]), "string": st.sampled_from(["abc", "x1", "--"]),
              "choice-text": st.sampled_from(["foo", "ERF", "Gram", ",", "w,,q", "xi,w"])}


def _cli_value(tmp_path, kind, draw):
    if kind in CLI_VALUES:
        return draw(CLI_VALUES[kind])
    if kind == "text-toml":
        (tmp_path / "bad.toml").write_text("this is = = not toml")
        return str(tmp_path / "bad.toml")
    if kind == "binary":
        (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00bad")
        return str(tmp_path / "bin.toml")
    return str(_make(tmp_path, kind))


@pytest.mark.parametrize("command, option, kind", CLI_CASES, ids=[f"{c}{o}-{k}" for c, o, k in CLI_CASES])
def test_cli_option(command, option, kind, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    good = {"scan": ["good.toml"], "plot": [], "demo": [], "ode": TINY, "simulate": TINY + ["--replicas", "1"]}[command]
    (tmp_path / "good.toml").write_text('[fixed]\nN = 10\nM = 2\nteacher = "random"\nstudent = "full"\n'
                                        'alpha_max = 2.0\npoints = 4\n[grid]\neta = [1.0]\n')

    @SETTINGS
    @given(st.data())
    def check(data):
        value = _cli_value(tmp_path, kind, data.draw)
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        args = [command, *good]
        if option.startswith("--"):
            args += [f"{option}={value}"]
        elif command == "scan":
            args = [command, value]
        else:
            args += [value]
        if command == "scan" and option != "config":
            args += ["--quiet"]
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 2, (args, out, err)
        assert err.startswith("onlinemdl: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before

    check()


CONFIGS = {
    "run-int": "run = 3", "run-empty": 'run = ""', "run-unknown": 'run = "nowhere:f"', "run-no-colon": 'run = "x"',
    "store-int": "store = 5", "store-empty": 'store = ""', "store-table": "[store]\na = 1", "workers-str": 'workers = "2"',
    "workers-zero": "workers = 0", "workers-bool": "workers = true", "workers-float": "workers = 1.5",
    "scheduler-int": "scheduler = 1", "fixed-array": "fixed = [1, 2]", "fixed-string": 'fixed = "N=10"',
    "grid-array": "grid = [1, 2]", "grid-scalar-axis": "[grid]\neta = 1.0", "grid-empty-axis": "[grid]\neta = []",
    "grid-and-points": "[grid]\neta = [1.0]\n[[points]]\neta = 1.0", "neither": "[fixed]\nN = 10",
    "points-table": "[points]\neta = 1.0", "points-scalars": "points = [1, 2]", "unknown-key": "[gird]\neta = [1.0]",
    "eta-string": "[grid]\neta = ['5']", "eta-negative": "[grid]\neta = [-1.0]", "eta-bool": "[grid]\neta = [true]",
    "alpha-max-string": '[fixed]\nalpha_max = "1e4"', "N-float": "[fixed]\nN = 10.5", "seed-negative":
        "[fixed]\nstudent_seed = -1", "teacher-unknown": '[fixed]\nteacher = "wise"', "unknown-parameter":
        "[fixed]\netta = 1.0", "method-unknown": '[fixed]\nmethod = "foo"', "batch-zero": "[fixed]\nbatch = 0",
    "activation-unknown": '[fixed]\nactivation = "relu"', "points-bad-value": "[[points]]\neta = 'x'",
    "repeat-value": "[grid]\neta = [1.0, 1.0]", "fixed-in-grid": "[fixed]\neta = 1.0\n[grid]\neta = [2.0]",
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_cli_scan_config(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = CONFIGS[kind]
    if "[grid]" not in text and "points" not in text and kind != "neither":
        text += "\n[grid]\neta = [1.0]"
    (tmp_path / "c.toml").write_text(text + "\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(["scan", "c.toml", "--quiet", "--workers", "1"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("onlinemdl: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_count_of_kinds():
    """The number of kinds of bad input this suite throws (issue 10 asks for at least 200)."""
    api = len(CASES) + len(FILE_CASES) + len(NAMES) + 7 + len(SCAN_ARGS) + len(TRAJ_CALLS) + len(MODEL_CASES)
    cli = len(CLI_CASES) + len(CONFIGS)
    assert api + cli >= 200, (api, cli)
