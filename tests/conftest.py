"""Shared set-up and helpers of the test suite.

Markers: ``slow`` (notebooks, dask, process pools, kill tests, long Monte Carlo) is left out of
the inner loop ``pytest -m "not slow"``; CI runs everything.
"""
import os
import zlib
from dataclasses import fields

import matplotlib
import numpy as np
import pytest

from onlinemdl.trajectory import Trajectory

matplotlib.use("Agg")
os.environ.setdefault("ONLINEMDL_QUICK", "1")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's own id: the same numbers in every process and on every
    rerun, so a failure can be replayed (``pytest 'tests/test_x.py::test_y[case]'``)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def same(a, b):
    """Strict equality: same types, dtypes, shapes and values (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (np.ndarray, np.generic)):
        if a.dtype != b.dtype or np.shape(a) != np.shape(b):
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def assert_same_trajectory(a, b):
    for f in fields(Trajectory):
        assert same(getattr(a, f.name), getattr(b, f.name)), f.name


def descendants(pid: int) -> list:
    """Pids of the living (not zombie) descendants of ``pid``, read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if rest[0] != "Z":
                parents.setdefault(int(rest[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

