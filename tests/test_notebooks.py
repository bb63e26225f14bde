"""The notebooks: each runs top to bottom in quick mode, and the committed ones carry the outputs of a
full run (no errors, figures present).

Quick mode (``ONLINEMDL_QUICK=1``) shrinks N, replicas and alpha so that all notebooks together run in
a few minutes; each runs with nbclient in a fresh ``python3`` kernel whose working directory is a
temporary folder (a quick run writes nothing into the repository).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = ("01_classic_plateau", "02_mode_learning_online", "03_scans", "04_finite_size", "05_mode_network",
            "06_mnist_paper_figures")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: wall-clock budget of one quick run (seconds); the quick runs take 10-25 s each on 2 cores
TIMEOUT = 300


def _need_mnist(monkeypatch):
    """Notebook 06 needs MNIST: $ONLINEMDL_MNIST, the user cache, or ../shared/data/mnist beside the repository."""
    import os

    from onlinemdl.modenet import mnist_data
    shared = ROOT.parent / "shared" / "data" / "mnist"
    if not os.environ.get(mnist_data.MNIST_ENV) and shared.is_dir():
        monkeypatch.setenv(mnist_data.MNIST_ENV, str(shared))
    try:
        mnist_data.locate()
    except FileNotFoundError as err:
        pytest.skip(f"notebook 06 needs MNIST: {err}")


def _ids(paths):
    return [p.stem for p in paths]


def test_every_notebook_is_there():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ONLINEMDL_QUICK", "1")
    if path.stem.startswith("06"):
        _need_mnist(monkeypatch)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=TIMEOUT,
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    elapsed = time.perf_counter() - t0
    assert elapsed < TIMEOUT, f"{path.name}: quick run took {elapsed:.0f} s (budget {TIMEOUT} s)"
    first = "".join(o.get("text", "") for o in nb.cells[[c.cell_type for c in nb.cells].index("code")].outputs)
    assert "quick mode: True" in first, f"{path.name}: the first code cell must report quick mode"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_has_full_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells and nb.cells[0].cell_type == "markdown", f"{path.name}: must open with a Markdown introduction"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name}: no code cells"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), \
        f"{path.name}: cells not executed once, top to bottom, in one fresh run: {counts}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: error output {errors[0].get('ename')}: {errors[0].get('evalue')}"
    first = "".join(o.get("text", "") for o in code[0].outputs)
    assert "quick mode: False" in first, f"{path.name}: committed outputs must come from a full run"
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert images >= 3, f"{path.name}: only {images} figures in the committed outputs"
    source = "\n".join(c.source for c in code)
    assert "ONLINEMDL_QUICK" in source
