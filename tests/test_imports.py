"""The house rules of shared/DESIGN.md (Layout), read from the code's own imports with `ast`.

Lazy imports (inside functions) count: they are how an import circle hides. Each rule names the
offending file and line, so a failure says where to look.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lstm_dist", "pipelines")
MAX_FUNCTION_LINES = 80
# Only these modules may talk to MLflow; the rest go through them (one door per service).
MLFLOW_DOORS = {"lstm_dist.tracking", "lstm_dist.registry", "lstm_dist.serving"}
# The command line and the Python API are the two front doors that run the pipelines.
PIPELINE_IMPORTERS = {"lstm_dist.cli", "lstm_dist.api"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[_module_name(path)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


SOURCES = _sources()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (its longest known prefix), or None if outside."""
    if name == "lstm_dist.pipelines" or name.startswith("lstm_dist.pipelines."):
        name = name.removeprefix("lstm_dist.")  # the folder pipelines/, installed as lstm_dist.pipelines
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in SOURCES:
            return candidate
    return None


def _is_import_by_name(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def _imports(tree: ast.Module, module: str) -> list[tuple[str, int]]:
    """(imported dotted name, line) for every import in the file, lazy ones included."""
    package = module if SOURCES[module][0].name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one.
            found += [
                (f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base, node.lineno)
                for alias in node.names
            ]
        elif _is_import_by_name(node):
            found.append((node.args[0].value, node.lineno))  # importlib.import_module("lstm_dist.x") hides no edge
    return found


def _edges() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {m: {} for m in SOURCES}
    for module, (_, tree) in SOURCES.items():
        for name, line in _imports(tree, module):
            target = _resolve(name)
            if target and target != module:
                graph[module].setdefault(target, line)
    return graph


GRAPH = _edges()


def _where(module: str, line: int) -> str:
    return f"{SOURCES[module][0].relative_to(ROOT)}:{line}"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return components


def test_no_import_circle():
    cycles = _cycles()
    detail = [
        f"{' <-> '.join(c)}: "
        + ", ".join(f"{a}->{b} ({_where(a, GRAPH[a][b])})" for a in c for b in GRAPH[a] if b in c)
        for c in cycles
    ]
    assert not cycles, "import circles:\n" + "\n".join(detail)


def _violations(modules, forbidden) -> list[str]:
    """Imports from `modules` (a predicate) of project modules matching `forbidden` (a predicate)."""
    return [
        f"{_where(m, line)} imports {target}"
        for m in SOURCES
        if modules(m)
        for target, line in GRAPH[m].items()
        if forbidden(target)
    ]


def _under(*prefixes: str):
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(
    "who, forbidden, rule",
    [
        (_under("lstm_dist.config"), _under("lstm_dist"), "config.py is a leaf"),
        (
            _under("lstm_dist.models"),
            lambda t: not _under("lstm_dist.models", "lstm_dist.config")(t),
            "models/ imports only config",
        ),
        (_under("lstm_dist.data"), _under("lstm_dist.models", "lstm_dist.train"), "data/ knows no model or training"),
        (
            _under("lstm_dist.workflow"),
            _under("lstm_dist.tracking", "lstm_dist.train"),
            "the engine knows no tracking or training",
        ),
        (
            lambda m: _under("lstm_dist")(m) and m not in PIPELINE_IMPORTERS,
            _under("pipelines"),
            "only the CLI and the API import pipelines/",
        ),
    ],
    ids=["config-leaf", "models", "data", "workflow", "pipelines"],
)
def test_layering(who, forbidden, rule):
    bad = _violations(who, forbidden)
    assert not bad, f"{rule}:\n" + "\n".join(bad)


def _outside_imports(top: str) -> list[tuple[str, int, str]]:
    return [
        (module, line, name)
        for module, (_, tree) in SOURCES.items()
        for name, line in _imports(tree, module)
        if name == top or name.startswith(top + ".")
    ]


def test_mlflow_only_behind_its_doors():
    bad = [f"{_where(m, line)} imports {name}" for m, line, name in _outside_imports("mlflow") if m not in MLFLOW_DOORS]
    assert not bad, f"MLflow is reached only through {sorted(MLFLOW_DOORS)}:\n" + "\n".join(bad)


def test_ray_started_only_by_cluster():
    calls = [
        _where(m, node.lineno)
        for m, (_, tree) in SOURCES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "init"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "ray"
        and m != "lstm_dist.cluster"
    ]
    assert not calls, "ray.init outside lstm_dist/cluster.py:\n" + "\n".join(calls)


def test_ray_internals_in_one_module():
    users = {
        m
        for m, _, name in _outside_imports("ray")
        if "._internal" in name or name.startswith("ray._raylet") or name.startswith("ray._private")
    }
    assert len(users) <= 1, (
        f"Ray internals are used from several modules (keep them in one that says why): {sorted(users)}"
    )


def test_functions_are_short():
    long = [
        f"{_where(m, node.lineno)} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for m, (_, tree) in SOURCES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def _references() -> dict[str, int]:
    """How often each identifier is used (names, attributes, imported names, identifier-like strings)."""
    counts: dict[str, int] = {}
    for _, tree in SOURCES.values():
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.ImportFrom):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                names = [node.value]  # __all__, getattr-based registries, entry points by name
            for name in names:
                counts[name] = counts.get(name, 0) + 1
    return counts


def test_no_dead_code():
    """A top-level function or class that nothing outside the tests uses has no reason to exist."""
    used = _references()
    entry_points = {"app", "main"}
    dead = [
        f"{_where(m, node.lineno)} {node.name}"
        for m, (_, tree) in SOURCES.items()
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        and not node.decorator_list  # registered by its decorator (CLI commands, Ray tasks)
        and node.name not in entry_points
        and not node.name.startswith("__")
        and used.get(node.name, 0) == 0
    ]
    assert not dead, "defined but never used outside tests:\n" + "\n".join(dead)


# The modules of the functions the pipelines send to Ray as tasks (a worker imports a task's module to run it).
TASK_MODULES = ("lstm_dist.data.ingest", "lstm_dist.evaluate")


def test_ray_tasks_are_not_defined_in_the_pipelines():
    """A task defined in pipelines/ makes each worker import the pipelines, and MLflow behind them."""
    bad = [
        f"{_where(m, node.lineno)} sends {node.args[0].id} of the same module to Ray"
        for m, (_, tree) in SOURCES.items()
        if _under("pipelines")(m)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "ray_task"
        and isinstance(node.args[0], ast.Name)
        and any(isinstance(d, ast.FunctionDef) and d.name == node.args[0].id for d in tree.body)
    ]
    assert not bad, "define Ray tasks in the module whose work they do:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", TASK_MODULES)
def test_a_ray_tasks_module_imports_no_mlflow(module):
    code = f"import sys, {module}; print([m for m in ('mlflow', 'lstm_dist.pipelines.steps') if m in sys.modules])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"importing {module} (as a Ray worker does) imports {run.stdout.strip()}"
