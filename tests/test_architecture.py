"""The layout's rules, checked on the source: imports flow one way, no cycles, no hidden imports.

Layers, lowest first (a module may import its own layer and those below it):
    blt, blt.vocab, blt.config, blt.errors, blt.files
    < blt.data < blt.models < blt.patching < blt.inference, blt.evaluation < blt.runs
    < blt.train < blt.experiments < blt.commands < blt.cli
inference and evaluation share a layer and never import each other. Imports sit at the top of
modules; only heavy optional dependencies may be imported inside functions (LAZY_ALLOWED).
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "blt"
LAYERS = [
    ("blt", "blt.vocab", "blt.config", "blt.errors", "blt.files"),
    ("blt.data",),
    ("blt.models",),
    ("blt.patching",),
    ("blt.inference", "blt.evaluation"),
    ("blt.runs",),
    ("blt.train",),
    ("blt.experiments",),
    ("blt.commands",),
    ("blt.cli",),
]
SEPARATE = {("blt.inference", "blt.evaluation"), ("blt.evaluation", "blt.inference")}
LAZY_ALLOWED = {"matplotlib", "tokenizers", "transformers", "lm_eval", "pyarrow", "safetensors"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """The layer entry a module belongs to (its package under blt, or itself at the top)."""
    parts = module.split(".")
    candidates = [".".join(parts[:2]), module, "blt"]
    for name in candidates:
        if any(name in layer for layer in LAYERS):
            return name
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def rank(module: str) -> int:
    name = room(module)
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement of a file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            out += [(node.module, node.lineno, id(node) in top)]
            out += [(n, node.lineno, id(node) in top) for n in names]  # `from blt.runs import layout`
    return out


def graph(root: Path = ROOT) -> dict[str, list[tuple[str, int, bool]]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: [(m, line, top) for m, line, top in imports_of(path) if m in modules]
            for name, path in modules.items()}, {name: imports_of(path) for name, path in modules.items()}


def violations(root: Path = ROOT) -> list[str]:
    edges, all_imports = graph(root)
    problems = []
    for mod, targets in edges.items():
        for target, line, _ in targets:
            if rank(target) > rank(mod):
                problems.append(f"{mod}:{line} imports {target}, a higher layer")
            if (room(mod), room(target)) in SEPARATE:
                problems.append(f"{mod}:{line} imports {target}: inference and evaluation stay apart")
            if room(target) == "blt.commands" and room(mod) not in ("blt.commands", "blt.cli"):
                problems.append(f"{mod}:{line} imports the command line ({target})")
    for mod, imports in all_imports.items():
        for target, line, top in imports:
            if not top and target.split(".")[0] not in LAZY_ALLOWED:
                problems.append(f"{mod}:{line} imports {target} inside a function")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def cycles(edges) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (or a self-import)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target, _, _ in edges.get(node, []):
            if target not in edges:
                continue
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_imports_flow_one_way_without_cycles():
    assert violations() == []


def test_models_import_nothing_above_them():
    edges, _ = graph()
    for mod, targets in edges.items():
        if room(mod) == "blt.models":
            assert all(rank(t) <= rank("blt.models") for t, _, _ in targets), mod


@pytest.mark.parametrize("plant, expected", [
    ("from blt.inference.args import GenerationArgs\n", "imports blt.inference.args, a higher layer"),
    ("def f():\n    from blt.vocab import BOS_ID\n", "inside a function"),
    ("from blt.commands.common import add_device_arg\n", "imports blt.commands.common, a higher layer"),
])
def test_a_planted_bad_import_is_caught(tmp_path, plant, expected):
    """The check fails on a reverse import, a hidden import and a library import of the CLI."""
    copy = tmp_path / "blt"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "models" / "masks.py"
    target.write_text(target.read_text() + "\n" + plant)
    found = violations(copy)
    assert any(expected in v and v.startswith("blt.models.masks") for v in found), found


def test_a_planted_cycle_is_caught(tmp_path):
    copy = tmp_path / "blt"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "data" / "stream.py").write_text((copy / "data" / "stream.py").read_text() + "\nimport blt.data.tokens\n")
    (copy / "data" / "tokens.py").write_text((copy / "data" / "tokens.py").read_text() + "\nimport blt.data.stream\n")
    assert any(v.startswith("import cycle") for v in violations(copy))


def test_no_module_is_a_god_file():
    long = {module_name(p): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 520}
    assert long == {}
