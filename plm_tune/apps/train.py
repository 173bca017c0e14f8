"""``plm-tune train CONFIG`` and ``plm-tune recipes``: the recipes that ship with plm-tune, run from a config.

As ``trl sft --config``, ``llamafactory-cli train x.yaml`` and torchtune's ``tune run`` / ``tune cp`` do: a pip
install carries the recipes and their configs (the package ``plm_tune_recipes``, the folder ``recipes/`` of a
clone), ``plm-tune train`` runs the recipe a config names (``recipe: NAME``; none: ``sft``) in this process, or
through ``accelerate launch`` for several processes or a DeepSpeed config, and ``plm-tune recipes cp`` copies a
recipe with its configs to edit. A recipe is run as a script, never imported by the library.
"""

from __future__ import annotations

import ast
import os
import runpy
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plm_tune.apps.config import read_config, recipe_of

__all__ = ["DEFAULT_RECIPE", "Recipe", "copy_recipe", "find_config", "find_recipe", "list_recipes", "recipes_folder",
           "train"]

RECIPES_PACKAGE = "plm_tune_recipes"
DEFAULT_RECIPE = "sft"  # a config that names no recipe: TRL's configs among them


@dataclass
class Recipe:
    """A packaged recipe: its name, script, one-line summary and the configs that name it."""

    name: str
    path: Path
    summary: str
    configs: list[str] = field(default_factory=list)


def recipes_folder() -> Path:
    """The installed recipes' folder (``recipes/`` itself in an editable install)."""
    import importlib.util

    spec = importlib.util.find_spec(RECIPES_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{RECIPES_PACKAGE} is not installed: reinstall plm-tune (pip install plm-tune, or "
                          "pip install -e . in a clone).")
    return Path(next(iter(spec.submodule_search_locations)))


def _summary(script: Path) -> str:
    """The first sentence of a script's docstring, on one line (read without importing the script)."""
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    text = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
    end = text.find(". ")
    text = text if end < 0 else text[:end + 1]
    return text if len(text) <= 100 else text[:text.rfind(" ", 0, 97)] + " ..."


def list_recipes() -> list[Recipe]:
    """Every packaged recipe with the packaged configs that name it, by name."""
    folder = recipes_folder()
    recipes = {path.stem: Recipe(path.stem, path, _summary(path))
               for path in sorted(folder.glob("*.py")) if not path.name.startswith("_")}
    for config in sorted((folder / "configs").glob("*.yaml")):
        name = recipe_of(read_config(config), config) or DEFAULT_RECIPE
        if name in recipes:
            recipes[name].configs.append(config.stem)
    return list(recipes.values())


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A config file: the path given, else the packaged config of that name (``radiology_demo``).

    Raises:
        FileNotFoundError: neither (listing the packaged configs).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = recipes_folder() / "configs" / f"{path.stem}.yaml"
    if path.parent == Path(".") and packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in (recipes_folder() / "configs").glob("*.yaml")))
    raise FileNotFoundError(f"no such config: {name_or_path} (neither a file nor a packaged config: {names}; "
                            "plm-tune recipes lists them).")


def find_recipe(name_or_path: str | None, config: Path) -> Path:
    """The recipe script to run ``config`` with.

    ``name_or_path`` (``--recipe``) else the config's ``recipe:`` else ``sft``; a ``.py`` path is that script; a
    name is ``NAME.py`` next to the config when there is one (a copy from ``plm-tune recipes cp``, edited), else
    the packaged recipe.

    Raises:
        FileNotFoundError: no such script or recipe (listing the recipes).
    """
    name = name_or_path or recipe_of(read_config(config), config) or DEFAULT_RECIPE
    if name.endswith(".py"):
        if not Path(name).is_file():
            raise FileNotFoundError(f"no such recipe script: {name}")
        return Path(name)
    for candidate in (config.parent / f"{name}.py", recipes_folder() / f"{name}.py"):
        if candidate.is_file():
            return candidate
    names = ", ".join(recipe.name for recipe in list_recipes())
    raise FileNotFoundError(f"no recipe {name!r} (from {'--recipe' if name_or_path else config}): the recipes are "
                            f"{names}, or give a script with --recipe PATH.py.")


def recipe_parser_of(config: str | os.PathLike) -> Any:
    """The parser (``make_parser()``) of the recipe that runs ``config``: the keys that recipe reads.

    Raises:
        FileNotFoundError: as ``find_recipe``.
    """
    import importlib.util

    script = find_recipe(None, Path(config))
    spec = importlib.util.spec_from_file_location(f"plm_tune_recipe_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up there
    spec.loader.exec_module(module)  # defines the recipe; its main() runs only as __main__
    return module.make_parser()


def _accelerate_config(name_or_path: str) -> Path:
    """``--accelerate-config``: a file, else a packaged one by name (``zero2``, ``zero3``, ``zero3_offload``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = recipes_folder() / "accelerate" / f"{path.stem}.yaml"
    if packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in (recipes_folder() / "accelerate").glob("*.yaml")))
    raise FileNotFoundError(f"no such accelerate config: {name_or_path} (packaged: {names}).")


def train(config: str | os.PathLike, overrides: list[str], *, recipe: str | None = None,
          num_processes: int | None = None, accelerate_config: str | None = None) -> int:
    """Run ``config`` with its recipe; returns the recipe's exit status.

    Args:
        config: a YAML config, or a packaged config's name.
        overrides: ``--key value`` flags for the recipe (win over the config).
        recipe: ``--recipe``: a recipe name or script instead of the config's.
        num_processes, accelerate_config: run through ``accelerate launch`` with these (several GPUs, DeepSpeed);
            neither: in this process, one process.

    Raises:
        FileNotFoundError: no such config, recipe or accelerate config.
    """
    config_path = find_config(config)
    script = find_recipe(recipe, config_path)
    print(f"plm-tune train: {script.stem} recipe ({script}) with {config_path}", file=sys.stderr)
    argv = [str(script), "--config", str(config_path), *overrides]
    if num_processes is None and accelerate_config is None:
        return run_script(argv)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--dynamo_backend", "no"]
    if accelerate_config is not None:
        launch += ["--config_file", str(_accelerate_config(accelerate_config))]
    else:
        launch += ["--mixed_precision", "no"]  # the recipe's SFTConfig (bf16) sets it, as under `make demo`
    if num_processes is not None:
        launch += ["--num_processes", str(num_processes)]
    return subprocess.call([*launch, *argv])


def run_script(argv: list[str]) -> int:
    """Run the script ``argv[0]`` as ``python argv...`` would, in this process; its exit status."""
    saved = sys.argv
    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
        return 1
    finally:
        sys.argv = saved
    return 0


def copy_recipe(name: str, destination: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Copy a recipe (a recipe's name: with all its configs; a config's name: with its recipe) to ``destination``.

    Returns:
        The files written.

    Raises:
        FileNotFoundError: no recipe or config of that name.
        FileExistsError: a file to write exists and ``overwrite`` is False.
    """
    recipes = {recipe.name: recipe for recipe in list_recipes()}
    if name in recipes:
        recipe, configs = recipes[name], recipes[name].configs
    else:
        owner = next((r for r in recipes.values() if Path(name).stem in r.configs), None)
        if owner is None:
            listed = "; ".join(f"{r.name} ({', '.join(r.configs) or 'no config'})" for r in recipes.values())
            raise FileNotFoundError(f"no recipe or config named {name!r}: recipes (configs): {listed}.")
        recipe, configs = owner, [Path(name).stem]
    folder = Path(destination)
    sources = [recipe.path, *(recipes_folder() / "configs" / f"{c}.yaml" for c in configs)]
    targets = [folder / source.name for source in sources]
    existing = [str(target) for target in targets if target.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist(s): choose another folder, or pass --force to "
                              "overwrite.")
    folder.mkdir(parents=True, exist_ok=True)
    for source, target in zip(sources, targets, strict=True):
        shutil.copyfile(source, target)
    return targets


# ------------------------------------------------------------------------------------------- the commands
def _train_command(args) -> int:
    return train(args.config, args.overrides, recipe=args.recipe, num_processes=args.num_processes,
                 accelerate_config=args.accelerate_config)


def _recipes_command(args) -> int:
    if args.action == "cp":
        if not args.name or not args.destination:
            raise ValueError("plm-tune recipes cp NAME DIR: name a recipe or a config, and a folder to copy into.")
        written = copy_recipe(args.name, args.destination, overwrite=args.force)
        script = next(path for path in written if path.suffix == ".py")
        print("Copied " + ", ".join(map(str, written)) + ". Edit them, then run:")
        for config in (path for path in written if path.suffix == ".yaml"):
            print(f"  plm-tune train {config}        (runs {script} next to it)")
            print(f"  accelerate launch {script} --config {config}")
        return 0
    if args.action is not None:
        raise ValueError(f"plm-tune recipes: unknown action {args.action!r}: list them with plm-tune recipes, copy "
                         "one with plm-tune recipes cp NAME DIR.")
    for recipe in list_recipes():
        print(f"{recipe.name}: {recipe.summary}")
        print(f"    configs: {', '.join(recipe.configs) or '(none: write your own)'}")
    print(f"\nRun one: plm-tune train CONFIG [--key value ...]   (a config that names no recipe runs {DEFAULT_RECIPE}); "
          "copy one to edit: plm-tune recipes cp NAME DIR. Installed in " + str(recipes_folder()))
    return 0


def add_train_commands(sub) -> None:
    """``train`` and ``recipes`` on the ``plm-tune`` command's subparsers (its ``--key value`` flags left to
    the recipe: ``main`` passes them as ``args.overrides``)."""
    train_parser = sub.add_parser(
        "train", keep_extras=True, allow_abbrev=False,
        help="run a recipe config: plm-tune train CONFIG [--key value ...] (the config's recipe; TRL's keys read)",
        description="Run CONFIG (a YAML file, or a packaged config's name: plm-tune recipes lists them) with the "
                    "recipe it names (recipe: NAME; none: sft). Any --key value after it overrides the config, "
                    "as in TRL. One process by default; --num-processes / --accelerate-config launch through "
                    "accelerate (several GPUs, DeepSpeed).")
    train_parser.add_argument("config", help="a YAML config, or a packaged config's name (radiology_demo)")
    train_parser.add_argument("--recipe", help="a recipe name or script to run instead of the config's")
    train_parser.add_argument("--num-processes", dest="num_processes", type=int,
                              help="launch this many processes through accelerate (one per GPU)")
    train_parser.add_argument("--accelerate-config", dest="accelerate_config",
                              help="an accelerate config file, or a packaged one: zero2, zero3, zero3_offload")
    train_parser.set_defaults(func=_train_command)

    recipes_parser = sub.add_parser("recipes", help="list the packaged recipes and configs; recipes cp NAME DIR "
                                                    "copies one to edit")
    recipes_parser.add_argument("action", nargs="?", choices=["cp"], help="cp: copy a recipe (or a config with "
                                                                          "its recipe) to a folder")
    recipes_parser.add_argument("name", nargs="?", help="with cp: a recipe or config name")
    recipes_parser.add_argument("destination", nargs="?", help="with cp: the folder to copy into")
    recipes_parser.add_argument("--force", action="store_true", help="with cp: overwrite files there")
    recipes_parser.set_defaults(func=_recipes_command)
