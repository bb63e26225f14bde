"""MNIST as users get it: found on disk, or downloaded once into a per-user cache.

Lookup order of :func:`mnist`: the ``path=`` argument, the folder named by the environment variable
``ONLINEMDL_MNIST``, then the per-user cache folder (:func:`cache_dir`:
``$XDG_CACHE_HOME/onlinemdl/mnist``, by default ``~/.cache/onlinemdl/mnist``). With ``download=True``
the four gzip IDX files missing from the cache are fetched from the public mirrors
(:data:`MIRRORS`), checked against their known SHA-256 (:data:`SHA256`) and moved into place
atomically (:func:`onlinemdl.atomic.staged_files`): a failed, corrupt or truncated download is
refused and leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..atomic import staged_files
from .data import Dataset, read_idx

#: environment variable naming the folder of the MNIST IDX files
MNIST_ENV = "ONLINEMDL_MNIST"
#: the four files of the usual distribution (gzip-compressed) and their SHA-256
SHA256 = {
    "train-images-idx3-ubyte.gz": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "train-labels-idx1-ubyte.gz": "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    "t10k-images-idx3-ubyte.gz": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    "t10k-labels-idx1-ubyte.gz": "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
}
#: public mirrors of the four files, tried in this order
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
#: role -> accepted file names (uncompressed or ``.gz``), the first the usual one
FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def cache_dir() -> Path:
    """The per-user cache folder of MNIST: ``$XDG_CACHE_HOME/onlinemdl/mnist`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onlinemdl" / "mnist"


def _find(folder, names):
    for name in names:
        for candidate in (name, name + ".gz"):
            full = Path(folder) / candidate
            if full.is_file():
                return full
    return None


def _files(folder):
    """role -> path of the files present in ``folder``, and the missing usual names."""
    found = {k: _find(folder, names) for k, names in FILES.items()}
    missing = [FILES[k][0] for k, f in found.items() if f is None]
    return found, missing


def locate(path=None):
    """``(folder, how)`` of the MNIST files by the lookup order (``how``: "path=", "$ONLINEMDL_MNIST"
    or "cache"); FileNotFoundError naming every place looked at when none has the four files."""
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"MNIST folder {str(path)!r} (path=) does not exist")
        missing = _files(folder)[1]
        if missing:
            raise FileNotFoundError(f"MNIST folder {str(path)!r} (path=) lacks {', '.join(missing)}")
        return folder, "path="
    env = os.environ.get(MNIST_ENV)
    looked = []
    if env:
        if not Path(env).is_dir():
            raise FileNotFoundError(f"MNIST folder {env!r} (${MNIST_ENV}) does not exist")
        missing = _files(env)[1]
        if missing:
            raise FileNotFoundError(f"MNIST folder {env!r} (${MNIST_ENV}) lacks {', '.join(missing)}")
        return Path(env), f"${MNIST_ENV}"
    looked.append(f"${MNIST_ENV} (not set)")
    cache = cache_dir()
    if cache.is_dir() and not _files(cache)[1]:
        return cache, "cache"
    looked.append(f"the cache folder {str(cache)!r} ({'incomplete' if cache.is_dir() else 'absent'})")
    raise FileNotFoundError(f"MNIST not found: looked at {' and '.join(looked)}; pass path=, set {MNIST_ENV}, or "
                            "download it once with mnist(download=True) or 'onlinemdl modenet mnist --download'")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url, tmp, expected, timeout):
    """Download ``url`` into ``tmp``; the SHA-256 it has (ValueError if not ``expected``)."""
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as out:
        for chunk in iter(lambda: r.read(1 << 16), b""):
            h.update(chunk)
            out.write(chunk)
    got = h.hexdigest()
    if got != expected:
        raise ValueError(f"SHA-256 {got[:16]}... differs from the known {expected[:16]}... (corrupt or truncated)")


def download_mnist(folder=None, mirrors=None, timeout=60.0, verbose=True) -> Path:
    """Download the four MNIST files into ``folder`` (default :func:`cache_dir`) and return it.

    Parameters
    ----------
    folder : where the files go (created if missing).
    mirrors : base URLs tried in order for each file (default :data:`MIRRORS`); a file is
        ``base + name``.
    timeout : seconds per connection attempt.
    verbose : print what is fetched from where and where it went.

    Files already in ``folder`` with the right SHA-256 are kept. Each download is checked against
    :data:`SHA256` and moved into place atomically; on any failure nothing of it is left, and
    ``OSError`` lists what every mirror answered.
    """
    folder = cache_dir() if folder is None else Path(folder)
    mirrors = list(MIRRORS if mirrors is None else ([mirrors] if isinstance(mirrors, str) else mirrors))
    if not mirrors or not all(isinstance(m, str) and m for m in mirrors):
        raise ValueError(f"mirrors must be a non-empty list of base URLs, got {mirrors!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"MNIST folder {str(folder)!r} is not a folder")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _download_all(folder, mirrors, timeout, verbose)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # leave nothing behind
        raise
    return folder


def _download_all(folder, mirrors, timeout, verbose):
    for name, expected in SHA256.items():
        target = folder / name
        if target.is_file() and _sha256(target) == expected:
            if verbose:
                print(f"{target}: present, SHA-256 verified")
            continue
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            try:
                with staged_files(target) as (tmp,):
                    _fetch(url, tmp, expected, timeout)
            except (OSError, ValueError, urllib.error.URLError) as exc:
                failures.append(f"{url}: {exc}")
                continue
            if verbose:
                print(f"{target}: downloaded from {url}, SHA-256 verified")
            break
        else:
            raise OSError(f"could not download {name} into {folder}: " + "; ".join(failures))


def mnist(path=None, dtype="float64", limit=None, download=False, mirrors=None) -> Dataset:
    """MNIST (60000 training and 10000 test images of 28 x 28 pixels, scaled to [0, 1]).

    Parameters
    ----------
    path : folder of the four IDX files (``train-images-idx3-ubyte`` etc., optionally ``.gz``).
        Looked up in this order: ``path``, ``$ONLINEMDL_MNIST``, the per-user cache (:func:`cache_dir`).
    dtype : "float64" or "float32".
    limit : keep only the first ``limit`` training and test images.
    download : when the files are found nowhere, download them into the cache first
        (:func:`download_mnist`; prints where they went).
    mirrors : base URLs for the download (default :data:`MIRRORS`).
    """
    if limit is not None and (not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 or None, got {limit!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    try:
        folder, _ = locate(path)
    except FileNotFoundError:
        if not download or path is not None or os.environ.get(MNIST_ENV):
            raise
        folder = download_mnist(mirrors=mirrors)
    files = _files(folder)[0]
    arrays = {k: read_idx(f) for k, f in files.items()}
    for part in ("train", "test"):
        imgs, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
            raise ValueError(f"{files[part + '_images']} and {files[part + '_labels']}: expected (n, rows, cols) images "
                             f"and (n,) labels, got shapes {imgs.shape} and {labels.shape}")
    sl = slice(None) if limit is None else slice(0, int(limit))
    X_tr = arrays["train_images"][sl].reshape(len(arrays["train_images"][sl]), -1)
    X_te = arrays["test_images"][sl].reshape(len(arrays["test_images"][sl]), -1)
    return Dataset((X_tr / 255.0).astype(dtype), arrays["train_labels"][sl].astype(np.intp),
                   (X_te / 255.0).astype(dtype), arrays["test_labels"][sl].astype(np.intp), 10, "mnist")
