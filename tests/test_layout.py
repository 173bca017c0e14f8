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
    """Every plm_tune module's plm_tune imports, at module level and inside functions alike."""
    modules = {p.stem for p in (ROOT / "plm_tune").glob("*.py")}
    found = {}
    for path in (ROOT / "plm_tune").glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("plm_tune"):
                parts = node.module.split(".")
                names |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("plm_tune.")}
        found[path.stem] = names - {path.stem}
    return found


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
