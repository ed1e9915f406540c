"""Imports point down the layers, and the layers are the package's folders (an AST walk, no import of the package).

Why: an app that owns what training needs (the set catalogue, checkpoint discovery) turns the package into one
import cycle held together by function-local imports, and the next feature then has no single place to land.
Every covidnet module lives in a folder, and each folder is a layer: ``LAYERS`` orders them, lowest first, so a
reader of the tree sees the architecture and this test keeps it true. A module may import its own folder and the
folders of the layers under it (each folder's ``__init__.py`` says what it owns and may import). Function-local
imports of covidnet modules count like any other (they hide cycles, they do not break them), and are allowed only
where listed in ``LOCAL_IMPORTS`` with the reason.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "covidnet"

# the folders of covidnet/, lowest layer first; folders in one tuple share a layer
LAYERS: list[tuple[str, ...]] = [
    ("core",),       # plumbing: errors, atomic writes, options, configs; no knowledge of images or models
    ("images",),     # one CT image from disk to the network's input (COVID-CT layout, sources/, preprocessing)
    ("metrics",),    # numbers from predictions: metrics, intervals, verdicts
    ("models",),     # networks, their weights, the LightningModule
    ("explain",),    # class activation maps and their numbers
    ("callbacks",),  # Lightning callbacks (covidnet/callbacks links to the top-level callbacks/)
    ("rundirs",),    # what runs leave on disk: run and sweep directories, their files, locks, checkpoints
    ("data",),       # what a run trains and is tested on: the data module, sets, sources mixed in
    ("trained",),    # trained runs read back: checkpoints, resumes, scored sets
    ("apps", "report"),  # entry points, and what they print or write for people
]
LAYER_OF = {folder: i for i, group in enumerate(LAYERS) for folder in group}
LAYER_NAMES = {i: "/".join(group) for i, group in enumerate(LAYERS)}

# (importing module, imported module), dotted without the leading "covidnet.": why it is imported inside a function
LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    ("apps.hydra_callbacks", "report"): "import cost: matplotlib and the report only when a multirun ends",
    ("report.cam", "trained.visualization"): "import cost: torch and the models only for the report's CAM step",
}
MAX_LOCAL_IMPORTS = 5
MAX_MODULE_LINES = 350
# the programs (python train.py, evaluate.py, visualize.py, python -m covidnet.report): none imports another; what
# two of them share lives below the apps
PROGRAMS = ("apps.train", "apps.evaluate", "apps.visualize", "report")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package (a namespace package: there is no covidnet/__init__.py)."""
    found = {}
    # covidnet/callbacks is a link to the checkout's callbacks/: walk it as the package sees it
    for folder, dirs, files in os.walk(PACKAGE, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for file in files:
            if file.endswith(".py"):
                found[module_name(Path(folder) / file)] = Path(folder) / file
    return dict(sorted(found.items()))


def layer_of(name: str) -> int | None:
    """A module's layer is its top folder's; a module directly in covidnet/ has none."""
    return LAYER_OF.get(name.split(".")[0]) if "." in name or (PACKAGE / name).is_dir() else None


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported covidnet module, inside a function?, line) for every import statement of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local_nodes = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
    }
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(["covidnet", *[p for p in base if p], *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from covidnet.x import y`: y may be a module itself; then it, not its package x, is what is imported
            submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}"[len("covidnet."):] in known]
            targets = submodules or [module]
        for target in targets:
            if target != "covidnet" and not target.startswith("covidnet."):
                continue
            inner = target[len("covidnet."):] if target != "covidnet" else ""
            if inner in known and inner != name:
                found.append((inner, id(node) in local_nodes, node.lineno))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, bool, int]]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_is_in_a_layer_folder():
    loose = sorted(n for n in modules() if n and "." not in n and not (PACKAGE / n).is_dir())
    assert not loose, f"move these modules into the folder of their layer (tests/test_layers.py LAYERS): {loose}"
    unplaced = sorted({n.split(".")[0] for n in modules() if n and layer_of(n) is None})
    assert not unplaced, f"place these folders in a layer (tests/test_layers.py LAYERS): {unplaced}"
    absent = sorted(f for f in LAYER_OF if not (PACKAGE / f / "__init__.py").is_file())
    assert not absent, f"LAYERS names folders without an __init__.py: {absent}"


def test_every_layer_folder_says_what_it_owns():
    for folder in LAYER_OF:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"covidnet/{folder}/__init__.py: a docstring saying what the folder owns"


def test_no_import_goes_up(graph):
    upward = [
        f"covidnet.{a} ({LAYER_NAMES[layer_of(a)]}) imports covidnet.{b} ({LAYER_NAMES[layer_of(b)]}), line {line}"
        for a, imported in graph.items() if a
        for b, _, line in imported
        if layer_of(b) is not None and layer_of(a) is not None and layer_of(b) > layer_of(a)
    ]
    assert not upward, "\n".join(upward)


def test_function_local_imports_are_the_listed_ones(graph):
    local = {(a, b) for a, imported in graph.items() for b, is_local, _ in imported if is_local}
    unlisted = sorted(pair for pair in local if pair not in LOCAL_IMPORTS)
    assert not unlisted, f"function-local covidnet imports not in LOCAL_IMPORTS (import at module level): {unlisted}"
    assert len(LOCAL_IMPORTS) <= MAX_LOCAL_IMPORTS
    stale = sorted(pair for pair in LOCAL_IMPORTS if pair not in local)
    assert not stale, f"LOCAL_IMPORTS lists imports that no longer exist: {stale}"


def test_no_import_cycle(graph):
    edges = {a: {b for b, _, _ in imported} for a, imported in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(f"covidnet.{n}" if n else "covidnet" for n in cycle))


def test_modules_stay_a_readable_size():
    long = {n or "covidnet": len(p.read_text().splitlines()) for n, p in modules().items()}
    over = {n: lines for n, lines in long.items() if lines >= MAX_MODULE_LINES}
    assert not over, f"split these modules by concern (>= {MAX_MODULE_LINES} lines): {over}"


def program_of(name: str) -> str | None:
    return next((p for p in PROGRAMS if name == p or name.startswith(p + ".")), None)


def test_no_program_imports_another(graph):
    crossing = [
        f"covidnet.{a} ({program_of(a)}) imports covidnet.{b} ({program_of(b)}), line {line}: move what they share below the apps"
        for a, imported in graph.items() if program_of(a)
        for b, _, line in imported
        if program_of(b) and program_of(b) != program_of(a)
    ]
    assert not crossing, "\n".join(crossing)
    # the check sees what it is about: each program imports at least one covidnet module, and report's own modules
    # (one program) import each other
    assert all(graph.get(p) for p in PROGRAMS)
    assert any(program_of(b) == "report" for b, _, _ in graph["report.sections"])


def test_the_walk_sees_a_known_edge_and_a_local_import(graph):
    # the checks above are only as good as the walk: it must see module-level and function-local imports
    assert any(b == "core.errors" for b, _, _ in graph["images.covid_ct_layout"])
    assert any(is_local for b, is_local, _ in graph["apps.hydra_callbacks"] if b == "report")
    # and a folder's layer must be what LAYERS says: an upward import is caught
    assert layer_of("apps.train") > layer_of("core.errors") and layer_of("report.write") == layer_of("apps.cli")
