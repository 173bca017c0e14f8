"""Imports flow one way: recipes / examples -> data_adapters -> plm_tune. Never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_top_levels(folder: Path) -> dict[str, set[str]]:
    found = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


# The command line is the application layer (like a recipe): it may use the adapters, lazily.
APPLICATION_MODULES = {"plm_tune/apps/cli.py"}


def test_library_never_imports_adapters_recipes_or_examples():
    for path, names in _imported_top_levels(ROOT / "plm_tune").items():
        assert not names & {"recipes", "examples", "benchmarks"}, path
        if path not in APPLICATION_MODULES:
            assert "data_adapters" not in names, path


def test_adapters_never_import_training_code_or_recipes():
    training = {"trl", "peft", "accelerate", "deepspeed", "recipes", "examples", "benchmarks"}
    for path, names in _imported_top_levels(ROOT / "data_adapters").items():
        assert not names & training, path


def test_adapters_never_import_each_other_only_shared_private_modules():
    adapters = {p.stem for p in (ROOT / "data_adapters").glob("*.py") if not p.stem.startswith("_")}
    for path in (ROOT / "data_adapters").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("data_adapters."):
                imported = node.module.split(".")[1]
                assert imported not in adapters or path.stem == "__init__", f"{path.name} imports {node.module}"


def test_adapters_use_only_the_sample_media_and_dicom_modules_of_the_library():
    """Adapters build samples: they may check structure and read media headers, never collate or train."""
    allowed = {"plm_tune.data.sample", "plm_tune.data.preference", "plm_tune.data.media", "plm_tune.data.dicom", "plm_tune.errors", "plm_tune.verbosity",
               "plm_tune.hub",
               "plm_tune.arguments"}  # settings' defaults (SHUFFLE_BUFFER): one default per setting, no training code
    for path in (ROOT / "data_adapters").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for module in modules:
                if module.split(".")[0] == "plm_tune":
                    assert module in allowed, f"{path.name} imports {module}"



def _module_name(path: Path) -> str:
    """``plm_tune/encoding/collator.py`` -> ``plm_tune.encoding.collator``; a package's ``__init__`` is the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _library_import_graph() -> dict[str, set[str]]:
    """{plm_tune module: the plm_tune modules it imports}, from every import statement in it: at the top, in a
    function (a deferred import still runs, and a circle through one breaks whoever imports first) or anywhere."""
    modules = {_module_name(path): path for path in (ROOT / "plm_tune").rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from plm_tune.modeling import testing` imports the submodule plm_tune.modeling.testing.
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[module] = {name for name in imported if name in modules and name != module}
    return graph


def _a_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None when there is none (depth-first search)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            if circle := visit(imported, path + [module]):
                return circle
        done.add(module)
        return None

    return next((circle for module in sorted(graph) if (circle := visit(module, []))), None)


def test_the_library_has_no_import_circle():
    graph = _library_import_graph()
    assert "plm_tune.modeling.run_folder" in graph["plm_tune.modeling.model"]  # the graph sees imports (this one is at the top)
    assert "plm_tune.modeling.model" in graph["plm_tune.modeling.memory"]  # and those inside functions
    assert _a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    circle = _a_circle(graph)
    assert circle is None, f"import circle: {' -> '.join(circle)}; move what both need to a module lower down."


# plm_tune's layers, bottom to top (docs/design.md, "Layers"): the foundation modules at the top of the package,
# then one sub-package per layer. A module imports only from its own layer or below.
LAYERS = (
    "plm_tune.errors", "plm_tune.verbosity", "plm_tune.methods", "plm_tune.hub",  # the foundation: no plm_tune imports
    "plm_tune.data",
    "plm_tune.arguments",  # the run settings: defaults from the data layer (NUM_FRAMES), read from encoding up
    "plm_tune.encoding",
    "plm_tune.modeling",
    "plm_tune.inference",
    "plm_tune.training",
    "plm_tune.after_training",
    "plm_tune.apps",
)


def _level(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + "."))


def test_every_library_module_is_in_a_layer():
    graph = _library_import_graph()
    assert len(graph) > 40
    unplaced = [m for m in graph if m != "plm_tune"
                and not any(m == layer or m.startswith(layer + ".") for layer in LAYERS)]
    assert unplaced == [], "put each module in a layer's sub-package (or add a foundation module to LAYERS)"


def test_imports_never_go_up_a_layer():
    """data -> encoding -> modeling -> inference -> training -> after_training -> apps: each layer imports only
    from its own layer or below (the package's own __init__, the public API, is above them all)."""
    graph = _library_import_graph()
    upward = [(module, imported) for module, names in graph.items() if module != "plm_tune"
              for imported in names if imported != "plm_tune" and _level(imported) > _level(module)]
    assert upward == []


def test_costs_sit_below_the_collator():
    graph = _library_import_graph()
    assert "plm_tune.encoding.collator" not in graph["plm_tune.encoding.costs"]
    assert "plm_tune.encoding.costs" not in graph["plm_tune.encoding.collator"]


def test_no_library_function_is_over_100_lines():
    long = [f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in (ROOT / "plm_tune").rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 100]
    assert long == []


def test_the_wheel_lists_every_package_of_the_tree():
    """pyproject.toml lists the packages (recipes/ ships as plm_tune_recipes, which discovery cannot map): a new
    sub-package missing from the list would be missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {str(init.parent.relative_to(ROOT)).replace("/", ".")
            for top in ("plm_tune", "data_adapters") for init in (ROOT / top).rglob("__init__.py")}
    assert listed == tree | {"plm_tune_recipes"}
    assert (ROOT / "recipes/__init__.py").is_file()
