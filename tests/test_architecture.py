"""The package's import graph: no import points up the stack and no two modules import each other (directly or
round a loop), imports inside functions included. The stack, bottom to top (docs/ARCHITECTURE.md):
shared modules (errors, io_utils, paths, ...) < readers < embedding_file < preprocessing < corpus < models <
training < evaluation | inference < cli / demo. Evaluation and inference are siblings: neither imports the other;
both write or read embedding files through ``embedding_file``."""

from __future__ import annotations

import ast
from pathlib import Path

import stamp_st

PACKAGE_DIR = Path(stamp_st.__file__).parent
LAYERS = {
    "readers": 1, "embedding_file": 1.5, "preprocessing": 2, "corpus": 3, "models": 4, "training": 5,
    "evaluation": 6, "inference": 6, "cli": 7, "demo": 7, "pipeline": 7, "__main__": 7,
}  # any other top-level module or package (errors, io_utils, paths, configs, metrics, ...) is shared: layer 0


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_edges(root: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports (at any depth of its code). ``from .pkg import name`` points at
    ``pkg.name`` when that is a module, else at ``pkg``."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    top = root.name
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names]
            else:
                continue
            edges[mod].update(t for t in targets if t in files and t != mod and t.split(".")[0] == top)
    return edges


def layer_of(mod: str) -> tuple[int, str]:
    parts = mod.split(".")
    area = parts[1] if len(parts) > 1 else ""
    return LAYERS.get(area, 0), area


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in edges.items():
        (ls, a_s) = layer_of(src)
        for tgt in targets:
            (lt, a_t) = layer_of(tgt)
            if lt > ls or (lt == ls and lt > 0 and a_s != a_t and {a_s, a_t} not in ({"cli", "demo"}, {"cli", "pipeline"}, {"demo", "pipeline"})
                           and "__main__" not in (a_s, a_t)):
                bad.append(f"{src} -> {tgt}")
    return sorted(bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_points_up_the_stack():
    edges = import_edges(PACKAGE_DIR)
    assert len(edges) > 50 and any(edges.values())  # the walk found the package
    assert upward_imports(edges) == []


def test_no_import_cycle():
    assert cycles(import_edges(PACKAGE_DIR)) == []


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checkers on a small package that has both faults."""
    pkg = tmp_path / "stamp_st"
    for rel, text in {
        "__init__.py": "",
        "readers/__init__.py": "",
        "readers/a.py": "def f():\n    from ..preprocessing.vocab import g\n",
        "preprocessing/__init__.py": "",
        "preprocessing/vocab.py": "from ..readers import a\ng = 1\n",
        "corpus/__init__.py": "",
        "corpus/build.py": "from . import means\n",
        "corpus/means.py": "def h():\n    from .build import x\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    edges = import_edges(pkg)
    assert upward_imports(edges) == ["stamp_st.readers.a -> stamp_st.preprocessing.vocab"]
    assert cycles(edges) == [["stamp_st.corpus.build", "stamp_st.corpus.means"],
                             ["stamp_st.preprocessing.vocab", "stamp_st.readers.a"]]


def test_every_package_import_names_something_that_exists():
    """``from stamp_st.x import name`` anywhere in the package or the benchmarks (imports inside functions
    included) names a module or attribute that exists: a refactor that moves a name cannot leave a caller
    behind that only fails when its code path runs."""
    import importlib

    repo = PACKAGE_DIR.parent.parent
    files = list(PACKAGE_DIR.rglob("*.py")) + list((repo / "benchmarks").glob("*.py"))
    missing = []
    for path in files:
        in_pkg = path.is_relative_to(PACKAGE_DIR)
        mod = module_name(path, PACKAGE_DIR) if in_pkg else None
        package = (mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]) if in_pkg else []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                target = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "stamp_st":
                continue
            try:
                module = importlib.import_module(target)
            except ImportError as err:
                if (err.name or "").startswith("stamp_st"):
                    missing.append(f"{path.name}:{node.lineno} {target}")
                continue  # an optional third-party dependency
            for alias in node.names:
                if alias.name != "*" and not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{target}.{alias.name}")
                    except ImportError:
                        missing.append(f"{path.name}:{node.lineno} {target}.{alias.name}")
    assert missing == []
