"""``onlinemdl modenet train``, ``onlinemdl modenet analyse`` and ``onlinemdl modenet mnist``.

:func:`add_subparser` registers the ``modenet`` command on the package's argparse sub-parsers.
Every output path is checked before any work starts; errors print one line and return exit status 2
with nothing written.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..atomic import staged_files
from . import analysis as an, data as datasets, io, mnist_data
from .fits import fit_log
from .network import DTYPES, KINDS
from .optim import SCHEDULES
from .train import train_model

DATASETS = ("digits", "xor", "mnist")
ANALYSES = ("importance", "ablation", "representations", "modes-scan", "cost")
_ERRORS = (ValueError, FileNotFoundError, ImportError, OSError, KeyError)
_FMT = argparse.ArgumentDefaultsHelpFormatter


def _ints(text):
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def load_data(name, seed=0, mnist_path=None, dtype="float64"):
    """The :class:`~.data.Dataset` ``name`` ("digits", "xor" or "mnist")."""
    if name == "digits":
        return datasets.digits(seed=seed, dtype=dtype)
    if name == "xor":
        return datasets.xor_dataset(seed=seed, dtype=dtype)
    if name == "mnist":
        return mnist_data.mnist(mnist_path, dtype=dtype)
    raise ValueError(f"data must be one of {DATASETS}, got {name!r}")


def _write_outputs(h5_writes, figures):
    """Render every figure and HDF5 file to temporary files, then move them all into place."""
    paths = [*figures, *h5_writes]
    with staged_files(*paths) as tmps:
        for tmp, fig in zip(tmps, figures.values()):
            fig.savefig(tmp, dpi=120)
        for tmp, write in zip(tmps[len(figures):], h5_writes.values()):
            write(tmp)
    return paths


def _check_out_dir(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder!r} is not writable")


def check_outputs(*paths):
    """Refuse, before any work, output paths that cannot be written: an empty name, a folder, a
    missing or read-only parent folder, an existing file that cannot be replaced."""
    for path in paths:
        if not str(path):
            raise ValueError("output path is empty")
        if os.path.isdir(path):
            raise IsADirectoryError(f"output {path!r} is a folder, not a file")
        _check_out_dir(path)
        if os.path.exists(path) and not os.path.isfile(path):
            raise ValueError(f"output {path!r} exists and is not a regular file")


def _train_outputs(args):
    stem = os.path.splitext(args.out)[0]
    figs = [stem + "_history.png"] + ([stem + "_modes.png"] if args.data == "xor" else [])
    return figs


def cmd_train(args):
    """Train one network and write ``--out`` (HDF5) and ``<out>_history.png`` (and the mode maps for xor)."""
    try:
        if not args.out.endswith((".h5", ".hdf5")):
            raise ValueError(f"--out must name an HDF5 file ending in .h5, got {args.out!r}")
        check_outputs(args.out, *_train_outputs(args))
        for name in ("epochs", "batch"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
        if args.patience is not None and args.patience < 1:
            raise ValueError(f"--patience must be >= 1, got {args.patience}")
        if not (0.0 <= args.validation < 0.5):
            raise ValueError(f"--validation must be a fraction in [0, 0.5), got {args.validation}")
        if args.patience is not None and args.validation == 0:
            raise ValueError("--patience needs held-out data: give --validation > 0")
        data = load_data(args.data, args.data_seed, args.mnist, args.dtype)
        fit_kw = {}
        if args.validation > 0:
            data, fit_kw["validation"] = split_validation(data, args.validation, args.data_seed)
            fit_kw["patience"] = args.patience
        net, hist = train_model(data, args.hidden, kind=args.kind, p=args.p, activation=args.activation,
                                epochs=args.epochs, batch_size=args.batch, optimizer=args.optimizer, lr=args.lr,
                                momentum=args.momentum, schedule=args.schedule, seed=args.seed,
                                dtype=args.dtype, progress=not args.quiet, step_size=args.step_size,
                                gamma=args.gamma, **fit_kw)
        net.meta["data"] = {"name": args.data, "seed": args.data_seed}
        stem = os.path.splitext(args.out)[0]
        figures = {stem + "_history.png": an.plot_history(hist)}
        if args.data == "xor" and net.mode_layers() and net.layers[0].xi_in.shape[0] == 2:
            figures[stem + "_modes.png"] = an.plot_xor_modes(an.xor_mode_maps(net), data.X_test, data.y_test)
        written = _write_outputs({args.out: lambda tmp: io.save(tmp, net, hist)}, figures)
    except _ERRORS as exc:
        print(f"onlinemdl modenet train: error: {exc}", file=sys.stderr)
        return 2
    if hist.status == "diverged" and hist.best_epoch < 0:
        acc = "no good epoch"
    else:
        acc = f"test accuracy {hist.final_test_acc:.4f}"
    print(f"{args.kind} {net.meta['widths']}: {net.n_params()} parameters, {acc} ({hist.status}"
          f"{': ' + hist.message if hist.message else ''}); wrote {', '.join(written)}")
    return 0


def split_validation(data, fraction, seed=0):
    """``(data without the validation part, (X_val, y_val))``: the last ``fraction`` of a seeded
    permutation of the training set is held out (the test set is untouched)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.X_train))
    k = int(round(fraction * len(order)))
    tr, va = order[:len(order) - k], order[len(order) - k:]
    kept = datasets.Dataset(data.X_train[tr], data.y_train[tr], data.X_test, data.y_test, data.n_classes, data.name)
    return kept, (data.X_train[va], data.y_train[va])


def cmd_mnist(args):
    """Say where MNIST is found, or download it (``--download``) into the cache or ``--to``."""
    try:
        if args.download:
            folder = mnist_data.download_mnist(args.to, mirrors=args.mirror, timeout=args.timeout,
                                               verbose=not args.quiet)
            print(f"MNIST is in {folder}")
            return 0
        folder, how = mnist_data.locate(args.to)
        print(f"MNIST found in {folder} ({how})")
        return 0
    except (*_ERRORS, NotADirectoryError) as exc:
        print(f"onlinemdl modenet mnist: error: {exc}", file=sys.stderr)
        return 2


def cmd_analyse(args):
    """Run the analyses and write ``<out>/analysis.h5`` and one figure per analysis."""
    try:
        what = args.what
        bad = [w for w in what if w not in ANALYSES]
        if bad:
            raise ValueError(f"--what must list names from {ANALYSES}, got {bad}")
        needs_model = [w for w in what if w in ("importance", "ablation", "representations")]
        if needs_model and args.model is None:
            raise ValueError(f"analyses {needs_model} need a MODEL file")
        if not os.path.isdir(args.out):
            raise FileNotFoundError(f"output folder {args.out!r} does not exist")
        figure_names = {"importance": "importance", "ablation": "ablation", "representations": "representations",
                        "modes-scan": "modes_scan", "cost": "cost"}
        check_outputs(os.path.join(args.out, "analysis.h5"),
                      *[os.path.join(args.out, figure_names[w] + ".png") for w in what])
        for name in ("n_random", "n_boot", "seeds", "epochs", "batch"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if not (0.0 < args.target <= 1.0):
            raise ValueError(f"--target must be in (0, 1], got {args.target}")
        net = compare = None
        data_name, data_seed = args.data, args.data_seed
        if args.model is not None:
            net, _, _ = io.load(args.model)
            saved = net.meta.get("data", {})
            data_name = data_name or saved.get("name")
            data_seed = saved.get("seed", 0) if data_seed is None else data_seed
        data = load_data(data_name or "digits", data_seed or 0, args.mnist)
        if args.compare is not None:
            compare, _, _ = io.load(args.compare)
        results, figures = {}, {}
        fig_path = lambda name: os.path.join(args.out, name + ".png")
        if "importance" in what:
            fits = an.importance_fits(net, n_boot=args.n_boot, seed=args.seed)
            results["importance"] = {f"layer{l + 1}": _fit_arrays(imp, fit) for l, (imp, fit) in fits.items()}
            figures[fig_path("importance")] = an.plot_mode_importance(fits)
        if "ablation" in what:
            ab = {l: an.ablation(net, data.X_test, data.y_test, l, n_random=args.n_random, seed=args.seed)
                  for l in net.mode_layers()}
            results["ablation"] = {f"layer{l + 1}": r.as_dict() for l, r in ab.items()}
            figures[fig_path("ablation")] = an.plot_ablation(ab)
        if "representations" in what:
            nets = {"model": net} if compare is None else {"model": net, "compare": compare}
            comp = {k: an.compactness(n, data.X_test) for k, n in nets.items()}
            dis = {k: an.disentanglement(n, data.X_test, data.y_test) for k, n in nets.items()} if data.n_classes else None
            results["representations"] = {k: {**comp[k].as_dict(), **({"D": dis[k].D} if dis else {})} for k in nets}
            figures[fig_path("representations")] = an.plot_representations(comp, dis)
        train_kw = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch}
        if "modes-scan" in what:
            scan = an.accuracy_vs_modes(data, args.widths, args.p_list, seeds=range(args.seeds),
                                        progress=not args.quiet, **train_kw)
            p_min = an.least_modes(scan, args.target)
            fit = fit_log(scan["N"], p_min)
            results["modes_scan"] = {**scan.as_dict(), "p_min": p_min, **{f"fit_{k}": v for k, v in fit.as_dict().items()}}
            figures[fig_path("modes_scan")] = an.plot_accuracy_vs_modes(scan, args.target)
        if "cost" in what:
            c = an.cost(data, [max(args.widths)], p=max(args.p_list), **train_kw)
            results["cost"] = {**c.as_dict(), "kinds": np.array(c.kinds, dtype="S")}
            figures[fig_path("cost")] = an.plot_cost(c)
        h5 = os.path.join(args.out, "analysis.h5")
        attrs = {"model": args.model or "", "data": data.name}
        written = _write_outputs({h5: lambda tmp: io.save_arrays(tmp, results, attrs)}, figures)
    except _ERRORS as exc:
        print(f"onlinemdl modenet analyse: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(written)}")
    return 0


def _fit_arrays(imp, fit):
    out = imp.as_dict()
    if fit is not None:
        out.update(breaks=fit.breaks, breaks_err=fit.breaks_err, slopes=fit.slopes, slopes_err=fit.slopes_err)
    return out


def add_subparser(subparsers):
    """Register ``modenet`` (``train``, ``analyse``, ``mnist``) on an argparse sub-parsers object."""
    p = subparsers.add_parser("modenet", help="the deep mode network (NumPy): train, analyse, get MNIST",
                              description="The deep mode network W = xi_out diag(lam) xi_in^T per layer, in NumPy: "
                                          "train a network, analyse trained ones, find or download MNIST.")
    sub = p.add_subparsers(dest="modenet_command", required=True)

    t = sub.add_parser("train", help="train a mode network or a baseline; write HDF5 and figures", formatter_class=_FMT,
                       description="Train one network (modes or a baseline) on a data set and write the model with "
                                   "its history to --out (HDF5), the learning curves to <out>_history.png and, for "
                                   "xor, the mode maps to <out>_modes.png. Outputs are checked before training.")
    t.add_argument("--data", choices=DATASETS, default="digits", help="data set")
    t.add_argument("--mnist", metavar="PATH", default=None,
                   help=f"folder of the MNIST IDX files (default: ${mnist_data.MNIST_ENV}, then the cache "
                        f"{mnist_data.cache_dir()})")
    t.add_argument("--data-seed", type=int, default=0, help="seed of the train/test (and validation) split or of the toy data")
    t.add_argument("--kind", choices=KINDS, default="modes", help="layer kind of every layer")
    t.add_argument("--hidden", type=_ints, default="128", help="hidden widths, comma-separated")
    t.add_argument("--p", type=int, default=None, help="modes (rank) per layer (default: round(ln N) of the widest layer)")
    t.add_argument("--activation", choices=("relu", "tanh", "erf", "linear"), default="relu", help="hidden activation")
    t.add_argument("--epochs", type=int, default=20, help="most epochs")
    t.add_argument("--batch", type=int, default=32, help="mini-batch size")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="optimiser")
    t.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    t.add_argument("--momentum", type=float, default=0.0, help="heavy-ball momentum (sgd only)")
    t.add_argument("--schedule", choices=SCHEDULES, default="constant", help="learning-rate schedule")
    t.add_argument("--step-size", type=int, default=10, help="epochs between learning-rate cuts (schedule step)")
    t.add_argument("--gamma", type=float, default=0.5, help="learning-rate factor per cut (step, exponential)")
    t.add_argument("--validation", type=float, default=0.0,
                   help="fraction of the training set held out for early stopping (0: none)")
    t.add_argument("--patience", type=int, default=None,
                   help="stop when the validation accuracy has not improved for this many epochs (needs --validation)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of the mini-batch order")
    t.add_argument("--dtype", choices=DTYPES, default="float64", help="floating-point type")
    t.add_argument("--out", default="modenet.h5", help="model file, .h5 (figures go next to it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("analyse", help="mode importance, ablation, representations, modes scan, cost", formatter_class=_FMT,
                       description="Analyse a trained model (mode importance with its piecewise power law, ablation, "
                                   "hidden representations) or train small networks (modes scan, cost). Writes "
                                   "<out>/analysis.h5 and one figure per analysis; outputs are checked first.")
    a.add_argument("model", nargs="?", help="model file written by 'modenet train'")
    a.add_argument("--what", type=lambda s: [w.strip() for w in s.split(",") if w.strip()],
                   default="importance,ablation,representations",
                   help=f"comma-separated analyses among {', '.join(ANALYSES)}")
    a.add_argument("--data", choices=DATASETS, default=None, help="data set (default: the model's training data)")
    a.add_argument("--mnist", metavar="PATH", default=None,
                   help=f"folder of the MNIST IDX files (default: ${mnist_data.MNIST_ENV}, then the cache)")
    a.add_argument("--data-seed", type=int, default=None, help="seed of the split (default: the model's)")
    a.add_argument("--compare", metavar="MODEL", default=None, help="a second model (e.g. dense) for the representations")
    a.add_argument("--n-random", type=int, default=10, help="random draws per k in the ablation")
    a.add_argument("--n-boot", type=int, default=100, help="bootstrap refits of the power-law fit")
    a.add_argument("--widths", type=_ints, default="16,32,64,128", help="widths of the modes scan, comma-separated")
    a.add_argument("--p-list", type=_ints, default="1,2,4,8,16,32", help="p values of the modes scan, comma-separated")
    a.add_argument("--seeds", type=int, default=1, help="seeds per point of the modes scan")
    a.add_argument("--target", type=float, default=0.95, help="fraction of dense accuracy defining p_min")
    a.add_argument("--epochs", type=int, default=20, help="epochs of each network trained by modes-scan and cost")
    a.add_argument("--lr", type=float, default=3e-3, help="learning rate of those networks (Adam)")
    a.add_argument("--batch", type=int, default=32, help="mini-batch size of those networks")
    a.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the random ablations")
    a.add_argument("--out", default=".", help="existing output folder")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_analyse)

    m = sub.add_parser("mnist", help="find MNIST, or download it into the cache (--download)", formatter_class=_FMT,
                       description="Without --download: say where MNIST is found (--to, then "
                                   f"${mnist_data.MNIST_ENV}, then the cache {mnist_data.cache_dir()}). With "
                                   "--download: fetch the four gzip IDX files from the public mirrors into the cache "
                                   "(or --to), verify their SHA-256 and move them into place atomically.")
    m.add_argument("--download", action="store_true", help="download the files missing from the folder")
    m.add_argument("--to", metavar="FOLDER", default=None, help="folder to look in or download to (default: the cache)")
    m.add_argument("--mirror", metavar="URL", action="append", default=None,
                   help="base URL of a mirror, repeatable, tried in order (default: "
                        + ", ".join(mnist_data.MIRRORS) + ")")
    m.add_argument("--timeout", type=float, default=60.0, help="seconds per connection attempt")
    m.add_argument("--quiet", action="store_true", help="print only the folder")
    m.set_defaults(func=cmd_mnist)
    return p
