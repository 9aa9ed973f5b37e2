"""The package's import graph: the stages of BUILD.md's diagram, imports running one way.

Walks every ``import`` (module level and inside functions) of ``leam_jax`` and
``converters`` with ``ast``: no cycle; the pure core imports only JAX and the
standard library; exactly one module of ``leam_jax`` reaches the converters;
and every import goes from a stage to the same or an earlier one.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = ("leam_jax", "leam_jax.core", "leam_jax.stats", "leam_jax.batching", "leam_jax.adapters", "leam_jax.sanity",
        "leam_jax.quality", "leam_jax.protection")
OPTIMISING = ("leam_jax.protection",)  # pure modules that optimise: optax too (CONVENTIONS)
# Stages, earliest first: a module may import its own stage or an earlier one.
STAGES = (("pure", PURE), ("models", ("leam_jax.models",)), ("converters", ("converters",)),
          ("weights", ("leam_jax.weights",)), ("face", ("leam_jax.face",)), ("study", ("leam_jax.study",)),
          ("protect", ("leam_jax.protect",)),
          ("main", ("leam_jax.main", "leam_jax.cli_flags", "leam_jax.protect.__main__", "converters.__main__")))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules=()) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement of a file; ``from pkg import
    mod`` counts as importing ``pkg.mod`` when that is one of ``modules``, else ``pkg``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            out += [(m, id(node) in top) for m in subs] if subs else [(base, id(node) in top)]
    return out


@pytest.fixture(scope="module")
def graph():
    files = {_module_name(p): p for d in ("leam_jax", "converters") for p in (ROOT / d).rglob("*.py")}
    edges = {}
    for name, path in files.items():
        targets = set()
        for mod, top in _imports(path, name, files):
            if mod in files:
                targets.add((mod, top))
        edges[name] = targets
    return files, edges


def _own(name: str, modules) -> bool:
    return name.split(".")[0] in ("leam_jax", "converters") and name in modules


def _with_parents(name: str, importer: str, modules) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first (those not already above the importer)."""
    parts = name.split(".")
    out = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    above = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    return {m for m in out if m in modules and (m == name or m not in above)}


def test_no_import_cycles(graph):
    files, edges = graph
    full = {n: set().union(*[_with_parents(t, n, files) for t, _ in e]) - {n} for n, e in edges.items()}
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(full[n]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(full):
        if n not in state:
            visit(n)


def test_pure_modules_import_only_jax_and_the_standard_library():
    allowed_third_party = {"jax", "jaxlib"}
    for name in PURE:
        path = ROOT / (name.replace(".", "/") + ("/__init__.py" if name == "leam_jax" else ".py"))
        for mod, top in _imports(path, name):
            root = mod.split(".")[0]
            if root in sys.stdlib_module_names or root in allowed_third_party or root == "__future__" or not mod:
                continue
            if mod in PURE or mod.rpartition(".")[0] in PURE and mod.startswith("leam_jax."):
                continue
            if name in OPTIMISING and root == "optax":
                continue
            # An adapter imports its own framework, only inside the function that adapts it.
            assert name == "leam_jax.adapters" and root in ("flax", "haiku") and not top, (name, mod)


def test_only_the_weights_module_reaches_the_converters(graph):
    _, edges = graph
    importers = sorted({n for n, e in edges.items() if n.startswith("leam_jax")
                        for t, _ in e if t.split(".")[0] == "converters"})
    assert len(importers) == 1 and importers[0].startswith("leam_jax.weights"), importers


def test_imports_run_from_the_study_down_to_the_core(graph):
    files, edges = graph

    def stage(n):
        best = None
        for i, (_, prefixes) in enumerate(STAGES):
            for p in prefixes:
                if (n == p or n.startswith(p + ".")) and (best is None or len(p) > best[1]):
                    best = (i, len(p))
        return best[0]

    wrong = [(n, t) for n, e in edges.items() for t, _ in e if stage(t) > stage(n)]
    assert not wrong, "imports against the stage order (" + " < ".join(s for s, _ in STAGES) + f"): {wrong}"


def test_no_converter_imports_another_converters_private_names():
    for path in (ROOT / "converters").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("converters"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path.name, node.module, private)
