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
APPLICATION_MODULES = {"plm_tune/cli.py"}


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
    allowed = {"plm_tune.sample", "plm_tune.media", "plm_tune.dicom", "plm_tune.errors", "plm_tune.verbosity"}
    for path in (ROOT / "data_adapters").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for module in modules:
                if module.split(".")[0] == "plm_tune":
                    assert module in allowed, f"{path.name} imports {module}"



def _library_import_graph() -> dict[str, set[str]]:
    """{plm_tune module: the plm_tune modules it imports}, from every import statement in it: at the top, in a
    function (a deferred import still runs, and a circle through one breaks whoever imports first) or anywhere."""
    modules = {"plm_tune" if path.stem == "__init__" else f"plm_tune.{path.stem}": path
               for path in (ROOT / "plm_tune").glob("*.py")}
    graph = {}
    for module, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from plm_tune import testing` imports the submodule plm_tune.testing.
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
    assert "plm_tune.run_folder" in graph["plm_tune.model"]  # the graph sees imports (this one is at the top)
    assert "plm_tune.model" in graph["plm_tune.memory"]  # and those inside functions
    assert _a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    circle = _a_circle(graph)
    assert circle is None, f"import circle: {' -> '.join(circle)}; move what both need to a module lower down."


# plm_tune's layers, bottom to top (docs/design.md, "Layers"). A module imports only from its own layer or below.
LAYERS = (
    ("data", {"errors", "verbosity", "frame_selection", "frame_decoding", "dicom_render", "dicom", "media", "sample",
              "arguments", "methods"}),
    ("encoding", {"formatting", "tiling", "length_policy", "sample_plan", "pixels", "collator", "costs", "sampler",
                  "sparse_logits", "preflight"}),
    ("model", {"precision", "architecture", "model", "run_folder", "memory", "devices", "quiet_log", "testing",
               "testing_real"}),
    ("inference", {"generation", "metrics", "evaluation"}),
    ("training", {"callbacks", "checkpoints", "distributed", "trainer", "plm_trainer", "plan"}),
    ("after training", {"outputs", "report", "report_summary", "merge", "push", "model_card"}),
    ("application", {"finetune", "cli", "cli_run", "__init__"}),
)


def _plm_tune_imports() -> dict[str, set[str]]:
    """``_library_import_graph`` by short module names (``collator``, ...), ``__init__`` for the package."""
    short = {"plm_tune": "__init__"}
    return {short.get(m, m.removeprefix("plm_tune.")): {short.get(n, n.removeprefix("plm_tune.")) for n in names}
            for m, names in _library_import_graph().items()}


def test_every_library_module_has_a_layer():
    layered = set().union(*(modules for _, modules in LAYERS))
    assert {p.stem for p in (ROOT / "plm_tune").glob("*.py")} <= layered


def test_imports_never_go_up_a_layer():
    """The layers of docs/design.md hold: data -> encoding -> model -> inference -> training -> after training
    -> application, each importing only from its own layer or below (costs, for one, below the collator's users)."""
    level = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}
    upward = [(module, imported) for module, names in _plm_tune_imports().items() for imported in names
              if imported in level and level[imported] > level[module] and module != "__init__"]
    assert upward == []


def test_costs_sit_below_the_collator():
    assert "collator" not in _plm_tune_imports()["costs"]
