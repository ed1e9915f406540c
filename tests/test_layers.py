"""Imports point down: base -> domain -> composition -> apps (an AST walk over the package, no import of it).

Why: an app that owns what training needs (the set catalogue, checkpoint discovery) turns the package into one
import cycle held together by function-local imports, and the next feature then has no single place to land.
Every covidnet module is placed in a layer below; a module may import its own layer and the layers under it.
Function-local imports of covidnet modules count like any other (they hide cycles, they do not break them), and
are allowed only where listed in ``LOCAL_IMPORTS`` with the reason.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "covidnet"

BASE, DOMAIN, COMPOSITION, APPS = range(4)
LAYER_NAMES = ("base", "domain", "composition", "apps")

# module (dotted, without the leading "covidnet.") -> layer; a package name covers its submodules
LAYERS = {
    # base: no knowledge of images or models
    "errors": BASE, "atomic": BASE, "write_check": BASE, "options": BASE, "configs": BASE, "timing": BASE, "processes": BASE,
    # domain: one concern each (images, sources, weights, networks, statistics, maps)
    "covid_ct_layout": DOMAIN, "sources": DOMAIN, "preprocess": DOMAIN, "lungs": DOMAIN, "augment": DOMAIN,
    "sampling": DOMAIN, "download": DOMAIN, "hardware": DOMAIN, "weights_io": DOMAIN, "ct_weights": DOMAIN,
    "lite_weights": DOMAIN, "archs": DOMAIN, "inits": DOMAIN, "backbones": DOMAIN, "bn_calibration": DOMAIN, "model": DOMAIN, "training_recipe": DOMAIN,
    "predict": DOMAIN, "metric_registry": DOMAIN, "stats": DOMAIN, "arm_stats": DOMAIN, "cam": DOMAIN, "cam_metrics": DOMAIN,
    "cam_scores": DOMAIN, "cam_figure": DOMAIN, "ensembles": DOMAIN, "test_predictions": DOMAIN,
    # composition: what trains, and what runs leave on disk, built from the domain
    "image_cache": COMPOSITION, "selection": COMPOSITION, "datamodule": COMPOSITION, "multisource": COMPOSITION,
    "near_duplicates": COMPOSITION, "sets": COMPOSITION, "set_metrics": COMPOSITION, "set_scoring": COMPOSITION, "run_files": COMPOSITION,
    "runs": COMPOSITION, "run_lock": COMPOSITION, "run_checkpoints": COMPOSITION, "checkpoint": COMPOSITION,
    "checkpoint_saving": COMPOSITION, "resume": COMPOSITION, "hydra_resolvers": COMPOSITION, "hydra_jobs": COMPOSITION, "eval_lock": COMPOSITION, "callbacks": COMPOSITION,
    "external_summary": COMPOSITION, "visualization": COMPOSITION, "evaluation": COMPOSITION,
    # apps: entry points and what they print or write for people
    "cli": APPS, "train": APPS, "evaluate": APPS, "visualize": APPS, "report": APPS, "hydra_callbacks": APPS,
}

# (importing module, imported module): why it is imported inside a function
LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    ("hydra_callbacks", "report"): "import cost: matplotlib and the report only when a multirun ends",
    ("report.cam", "visualization"): "import cost: torch and the models only for the report's CAM step",
}
MAX_LOCAL_IMPORTS = 5

# the programs with a command line (python train.py, evaluate.py, visualize.py, python -m covidnet.report): each is
# thin, and none imports another; what two of them share (evaluation, CAMs) is a library in the layers below
PROGRAMS = ("train", "evaluate", "visualize", "report")
MAX_MODULE_LINES = 350


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package (a namespace package: there is no covidnet/__init__.py)."""
    found = {}
    # covidnet/callbacks is a link to the checkout's callbacks/: walk it as the package sees it
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        for file in files:
            if file.endswith(".py"):
                found[module_name(Path(folder) / file)] = Path(folder) / file
    return dict(sorted(found.items()))


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    return None


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
            # `from covidnet.x import y`: y may be a module itself
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
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


def test_every_module_has_a_layer():
    missing = sorted(n for n in modules() if n and layer_of(n) is None)
    assert not missing, f"place these modules in a layer (tests/test_layers.py LAYERS): {missing}"


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
    # a submodule import counts once, as its top module pair
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
    assert any(b == "errors" for b, _, _ in graph["covid_ct_layout"])
    assert any(is_local for b, is_local, _ in graph["hydra_callbacks"] if b == "report")
