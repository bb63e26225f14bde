"""``onlinemdl modenet train`` and ``onlinemdl modenet analyse``.

:func:`add_subparser` registers the ``modenet`` command on the package's argparse sub-parsers.
Errors print one line and return exit status 2 before anything is written.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..atomic import staged_files
from . import analysis as an, data as datasets, io
from .fits import fit_log
from .network import DTYPES, KINDS
from .optim import SCHEDULES
from .train import train_model

DATASETS = ("digits", "xor", "mnist")
ANALYSES = ("importance", "ablation", "representations", "modes-scan", "cost")
_ERRORS = (ValueError, FileNotFoundError, ImportError, OSError, KeyError)


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
        return datasets.mnist(mnist_path, dtype=dtype)
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


def cmd_train(args):
    """Train one network and write ``--out`` (HDF5) and ``<out>_history.png`` (and the mode maps for xor)."""
    try:
        _check_out_dir(args.out)
        data = load_data(args.data, args.data_seed, args.mnist, args.dtype)
        net, hist = train_model(data, args.hidden, kind=args.kind, p=args.p, activation=args.activation,
                                epochs=args.epochs, batch_size=args.batch, optimizer=args.optimizer, lr=args.lr,
                                momentum=args.momentum, schedule=args.schedule, seed=args.seed,
                                dtype=args.dtype, progress=not args.quiet)
        net.meta["data"] = {"name": args.data, "seed": args.data_seed}
        stem = os.path.splitext(args.out)[0]
        figures = {stem + "_history.png": an.plot_history(hist)}
        if args.data == "xor" and net.mode_layers() and net.layers[0].xi_in.shape[0] == 2:
            figures[stem + "_modes.png"] = an.plot_xor_modes(an.xor_mode_maps(net), data.X_test, data.y_test)
        written = _write_outputs({args.out: lambda tmp: io.save(tmp, net, hist)}, figures)
    except _ERRORS as exc:
        print(f"onlinemdl modenet train: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.kind} {net.meta['widths']}: {net.n_params()} parameters, test accuracy {hist.test_acc[-1]:.4f} "
          f"({hist.status}); wrote {', '.join(written)}")
    return 0


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
            results["ablation"] = {f"layer{l + 1}": r for l, r in ab.items()}
            figures[fig_path("ablation")] = an.plot_ablation(ab)
        if "representations" in what:
            nets = {"model": net} if compare is None else {"model": net, "compare": compare}
            comp = {k: an.compactness(n, data.X_test) for k, n in nets.items()}
            dis = {k: an.disentanglement(n, data.X_test, data.y_test) for k, n in nets.items()} if data.n_classes else None
            results["representations"] = {k: {**comp[k], **({"D": dis[k]["D"]} if dis else {})} for k in nets}
            figures[fig_path("representations")] = an.plot_representations(comp, dis)
        train_kw = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch}
        if "modes-scan" in what:
            scan = an.accuracy_vs_modes(data, args.widths, args.p_list, seeds=range(args.seeds),
                                        progress=not args.quiet, **train_kw)
            p_min = an.least_modes(scan, args.target)
            fit = fit_log(scan["N"], p_min)
            results["modes_scan"] = {**scan, "p_min": p_min, **{f"fit_{k}": v for k, v in fit.items()}}
            figures[fig_path("modes_scan")] = an.plot_accuracy_vs_modes(scan, args.target)
        if "cost" in what:
            c = an.cost(data, [max(args.widths)], p=max(args.p_list), **train_kw)
            results["cost"] = {**c, "kinds": np.array(c["kinds"], dtype="S")}
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
    out = {"tau": imp["tau"], "order": imp["order"], "gamma": imp["gamma"]}
    if fit is not None:
        out.update(breaks=fit.breaks, breaks_err=fit.breaks_err, slopes=fit.slopes, slopes_err=fit.slopes_err)
    return out


def add_subparser(subparsers):
    """Register ``modenet`` (with ``train`` and ``analyse``) on an argparse sub-parsers object."""
    p = subparsers.add_parser("modenet", help="the deep mode network (NumPy): train and analyse")
    sub = p.add_subparsers(dest="modenet_command", required=True)

    t = sub.add_parser("train", help="train a mode network or a baseline; write HDF5 and figures")
    t.add_argument("--data", choices=DATASETS, default="digits")
    t.add_argument("--mnist", metavar="PATH", help=f"folder of the MNIST IDX files (default ${datasets.MNIST_ENV})")
    t.add_argument("--data-seed", type=int, default=0, help="seed of the train/test split or of the toy data")
    t.add_argument("--kind", choices=KINDS, default="modes")
    t.add_argument("--hidden", type=_ints, default=[128], help="hidden widths, comma-separated (default 128)")
    t.add_argument("--p", type=int, default=None, help="modes per layer (default round(ln N))")
    t.add_argument("--activation", choices=("relu", "tanh", "erf", "linear"), default="relu")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--momentum", type=float, default=0.0)
    t.add_argument("--schedule", choices=SCHEDULES, default="constant")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", choices=DTYPES, default="float64")
    t.add_argument("--out", default="modenet.h5", help="model file (figures go next to it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("analyse", help="mode importance, ablation, representations, modes scan, cost")
    a.add_argument("model", nargs="?", help="model file written by 'modenet train'")
    a.add_argument("--what", type=lambda s: [w.strip() for w in s.split(",") if w.strip()],
                   default=["importance", "ablation", "representations"],
                   help=f"comma-separated analyses among {', '.join(ANALYSES)}")
    a.add_argument("--data", choices=DATASETS, default=None, help="default: the model's training data")
    a.add_argument("--mnist", metavar="PATH")
    a.add_argument("--data-seed", type=int, default=None)
    a.add_argument("--compare", metavar="MODEL", help="a second model (e.g. dense) for the representations")
    a.add_argument("--n-random", type=int, default=10, help="random draws per k in the ablation")
    a.add_argument("--n-boot", type=int, default=100, help="bootstrap refits of the power-law fit")
    a.add_argument("--widths", type=_ints, default=[16, 32, 64, 128], help="widths of the modes scan")
    a.add_argument("--p-list", type=_ints, default=[1, 2, 4, 8, 16, 32], help="p values of the modes scan")
    a.add_argument("--seeds", type=int, default=1, help="seeds per point of the modes scan")
    a.add_argument("--target", type=float, default=0.95, help="fraction of dense accuracy defining p_min")
    a.add_argument("--epochs", type=int, default=20)
    a.add_argument("--lr", type=float, default=3e-3)
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default=".", help="existing output folder")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=cmd_analyse)
    return p
