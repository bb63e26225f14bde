"""The layout's promises (docs/architecture.md): imports only go down the layers, no import
cycle, no module imports another module's private names, and ``import onlinemdl`` is cheap."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onlinemdl"

#: Layer of every module (docs/architecture.md); a module may import only from its own layer or below.
LAYERS = {
    "_version": 1, "runsetup": 1, "gaussian": 1,
    "model": 2, "dynamics": 2,
    "ode": 3, "sgd": 3, "modenet.online": 3,
    "trajectory": 0,  # a leaf: imported by the engines to build their result
    "atomic": 5, "storage": 5, "scan_store": 5, "analysis": 5, "plotting": 5, "recipes": 5, "scan": 5,
    "stages": 5,
    "modenet": 2, "modenet.io": 5, "modenet.analysis": 5, "modenet.mnist_data": 5, "modenet.experiments": 5,
    "cli": 6, "modenet.cli": 6, "__main__": 6, "__init__": 7, "modenet.__init__": 7,
}


def module_name(path: Path) -> str:
    """``ode.kernels`` for ode/kernels.py, ``ode.__init__`` for ode/__init__.py."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def layer(name: str) -> int:
    """The layer of a module: its own entry, else its package's (``ode.kernels`` -> ``ode``)."""
    full = name
    while name not in LAYERS:
        if not name:
            raise KeyError(f"module {full!r} has no layer: add it to LAYERS (docs/architecture.md)")
        name = name.rpartition(".")[0]
    return LAYERS[name]


def imports(path: Path):
    """``(module, names)`` for every import of the package made in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join([*base, node.module] if node.module else base)
            names = [a.name for a in node.names]
            if not node.module:  # from . import analysis: each name is a module
                for n in names:
                    yield ".".join([*base, n]) if base else n, []
            else:
                yield target, names
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onlinemdl"):
            yield node.module.removeprefix("onlinemdl").lstrip(".") or "__init__", [a.name for a in node.names]


def graph():
    """Module -> its imports of the package, a package standing for its ``__init__``."""
    names = {module_name(p) for p in PACKAGE.rglob("*.py")}
    resolve = lambda t: f"{t}.__init__" if f"{t}.__init__" in names else t  # noqa: E731
    return {module_name(p): [(resolve(t), n) for t, n in imports(p)] for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_upward_or_private_names():
    bad = []
    for src, deps in graph().items():
        for target, names in deps:
            if src.endswith("__init__") and target.startswith(src.removesuffix("__init__")):
                continue  # a package's __init__ gathers its own modules' names
            if layer(target) > layer(src):
                bad.append(f"{src} (layer {layer(src)}) imports {target} (layer {layer(target)})")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                bad.append(f"{src} imports private {private} from {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    g = graph()
    edges = {src: {t for t, _ in deps if t in g} for src, deps in g.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node, [node])


def test_import_is_lazy():
    """``import onlinemdl`` loads neither Numba, SciPy nor h5py: they come with the first use."""
    code = "import sys, onlinemdl; print(sorted(m for m in ('numba', 'scipy', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
