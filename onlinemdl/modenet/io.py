"""HDF5 storage of networks, training histories and analysis results (atomic writes)."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from ..atomic import atomic_file, check_readable
from .network import Network
from .train import History

FORMAT = "onlinemdl.modenet"
VERSION = 1


def atomic_h5(path, write):
    """Call ``write(h5file)`` on a fresh file that replaces ``path`` atomically once complete."""
    with atomic_file(path, fresh=True) as f:
        write(f)


def _write_dict(group, arrays):
    for name, value in arrays.items():
        if isinstance(value, dict):
            _write_dict(group.create_group(name), value)
        else:
            group.create_dataset(name, data=np.asarray(value))


def _read_dict(group):
    return {k: _read_dict(v) if isinstance(v, h5py.Group) else v[()] for k, v in group.items()}


def save(path, net, history=None, extra=None):
    """Write ``net`` (and optionally its :class:`History` and a dict of ``extra`` arrays) to ``path``."""
    config = {"specs": net.specs, "activations": net.activations, "output": net.output,
              "trainable": list(net.trainable), "meta": net.meta}

    def write(f):
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["config"] = json.dumps(config)
        _write_dict(f.create_group("params"), net.params)
        if history is not None:
            g = f.create_group("history")
            _write_dict(g, history.as_dict())
            g.attrs["status"] = history.status
            g.attrs["message"] = history.message
            g.attrs["best_epoch"] = history.best_epoch
            g.attrs["diverged_at"] = history.diverged_at
        if extra:
            _write_dict(f.create_group("extra"), extra)

    atomic_h5(path, write)


def _open(path):
    """``path`` opened for reading; FileNotFoundError / ValueError naming it when it is missing, a
    folder, not HDF5, or corrupt."""
    if path is None or not str(path):
        raise ValueError("path is empty")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not an HDF5 file")
    check_readable(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: corrupt or truncated HDF5 file ({exc})") from None


def load(path):
    """Read ``(net, history, extra)`` written by :func:`save` (history None and extra {} when absent)."""
    with _open(path) as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: not an onlinemdl.modenet model file")
        try:
            config = json.loads(f.attrs["config"])
            params = {k: np.ascontiguousarray(v) for k, v in _read_dict(f["params"]).items()}
            history = None
            if "history" in f:
                g = f["history"]
                attrs = {k: g.attrs[k] for k in ("best_epoch", "diverged_at") if k in g.attrs}
                history = History(**_read_dict(g), status=str(g.attrs["status"]), message=str(g.attrs["message"]),
                                  **{k: int(v) for k, v in attrs.items()})
                if "best_epoch" not in attrs:  # written before best_epoch existed: the last epoch
                    history.best_epoch = len(history.loss) - 1
            extra = _read_dict(f["extra"]) if "extra" in f else {}
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: corrupt or incomplete modenet model file ({exc})") from None
    net = Network(config["specs"], params, config["activations"], config["output"], config["trainable"], config["meta"])
    return net, history, extra


def save_arrays(path, arrays, attrs=None):
    """Write a (nested) dict of arrays, and string/number ``attrs``, to ``path`` atomically."""
    def write(f):
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        _write_dict(f, arrays)

    atomic_h5(path, write)


def load_arrays(path):
    """The (nested) dict of arrays in ``path`` and its attributes."""
    with _open(path) as f:
        try:
            return _read_dict(f), dict(f.attrs)
        except (OSError, KeyError) as exc:
            raise ValueError(f"{path}: corrupt or incomplete HDF5 file ({exc})") from None
