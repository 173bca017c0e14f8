"""One config dialect: the keys a recipe config, ``plm-tune train`` and ``plm-tune plan`` read, in one parser.

A config is a YAML mapping of

- the run settings (``plm_tune.arguments``: ``ModelArguments``, ``MediaArguments``, ``EvalArguments``) and any
  ``trl.SFTConfig`` field (``trl.DPOConfig`` for the preference recipe);
- the corpus keys of its recipe (the recipe's ``DataArguments``, a ``CorpusArguments``: ``on_error``,
  ``eval_split``, ``streaming``, ``shuffle_buffer`` mean the same in every recipe). The ``sft`` recipe's corpus is
  a Hub / local dataset or a ``data:`` section (``adapter: NAME`` plus that data adapter's arguments), the
  section ``plm-tune plan`` and ``plm-tune data`` read;
- ``recipe: NAME``: which recipe ``plm-tune train`` runs it with (the recipe itself ignores it);
- TRL's names for the same settings (``TrlKeys``), so a ``trl sft`` / ``sft_vlm.py`` config reads as it is:
  ``use_peft`` / ``use_dora`` / ``load_in_4bit`` choose the ``method``, ``torch_dtype`` is ``dtype``,
  ``dataset_name`` / ``dataset_train_split`` / ``dataset_streaming`` are ``dataset`` / ``dataset_split`` /
  ``streaming``; ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``, ``dtype``,
  ``model_name_or_path`` (and the sft recipe's ``dataset_config``) are plm-tune's own names too.

Command-line flags (``--key value``) take the same keys and win over the config, as in TRL. An unknown key, in
the config or on the command line, is an error that lists the valid keys and the nearest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plm_tune.arguments import check_settings
from plm_tune.methods import Method

__all__ = ["PLMParser", "TrlKeys", "apply_trl_keys", "read_config"]

RECIPE_KEY = "recipe"  # which recipe `plm-tune train` runs a config with; the recipe's parser drops it


@dataclass
class TrlKeys:
    """TRL's names (``trl.ModelConfig``, ``trl.ScriptArguments``) for settings plm-tune names otherwise.

    Read next to the run settings and turned into them by ``apply_trl_keys``; None: not given."""

    use_peft: bool | None = field(default=None, metadata={"help": "TRL: true = method lora, false = method full."})
    use_dora: bool | None = field(default=None, metadata={"help": "TRL: true = method dora."})
    load_in_4bit: bool | None = field(default=None, metadata={"help": "TRL: true = method qlora (4-bit NF4)."})
    load_in_8bit: bool | None = field(default=None, metadata={"help": "TRL: 8-bit loading (refused: use qlora)."})
    torch_dtype: str | None = field(default=None, metadata={"help": "TRL's older name of dtype."})
    dataset_name: str | None = field(default=None, metadata={"help": "TRL: the recipe's dataset."})
    dataset_train_split: str | None = field(default=None, metadata={"help": "TRL: the recipe's dataset_split."})
    dataset_streaming: bool | None = field(default=None, metadata={"help": "TRL: the recipe's streaming."})


# TrlKeys that rename one field of a recipe's DataArguments: TRL name -> plm-tune name.
_DATA_RENAMES = {"dataset_name": "dataset", "dataset_train_split": "dataset_split", "dataset_streaming": "streaming"}
_METHOD_KEYS = ("load_in_4bit", "use_dora", "use_peft")  # in the order they decide the method


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config as a mapping (an empty file: {}).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the YAML does not parse, or is not a mapping.
    """
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{path} must be a YAML mapping of `key: value` lines; it holds a {type(config).__name__}.")
    return config


def _method_from_trl(keys: TrlKeys) -> Method | None:
    """The method TRL's switches ask for (None: they say nothing)."""
    if keys.load_in_8bit:
        raise ValueError("load_in_8bit: plm-tune quantises to 4-bit only (method qlora: NF4 with double "
                         "quantisation): set load_in_4bit: true, or remove load_in_8bit.")
    if keys.load_in_4bit:
        return "qlora"  # TRL's QLoRA is use_peft + load_in_4bit; plm-tune's qlora is LoRA on a 4-bit model
    if keys.use_dora:
        return "dora"
    if keys.use_peft is not None:
        return "lora" if keys.use_peft else "full"
    return None


def apply_trl_keys(keys: TrlKeys, settings: Sequence[Any], default_method: str) -> list[str]:
    """Turn TRL's keys into plm-tune's settings, in place; returns one note per key turned, for the log.

    Args:
        keys: the TRL keys read.
        settings: the other parsed dataclasses (``ModelArguments`` and the recipe's ``DataArguments`` among them).
        default_method: the recipe's default ``method``: a different one was set on purpose, and then a TRL
            switch that disagrees is an error, not a silent override.

    Raises:
        ValueError: a TRL key and plm-tune's key set to different values, a dataset key for a recipe that reads
            no dataset, ``load_in_8bit``.
    """
    from plm_tune.arguments import ModelArguments

    model = next(s for s in settings if isinstance(s, ModelArguments))
    notes = []
    method = _method_from_trl(keys)
    if method is not None:
        given = [f"{name}: {getattr(keys, name)}" for name in _METHOD_KEYS if getattr(keys, name) is not None]
        if model.method not in (default_method, method):
            raise ValueError(f"{', '.join(given)} means method {method}, but the config also sets method "
                             f"{model.method}: keep one of them.")
        model.method = method
        notes.append(f"{', '.join(given)} -> method: {method}")
    if keys.torch_dtype is not None:
        if model.dtype not in (None, keys.torch_dtype):
            raise ValueError(f"torch_dtype: {keys.torch_dtype} and dtype: {model.dtype} disagree: keep dtype.")
        model.dtype = keys.torch_dtype  # checked where it is used (plm_tune.modeling.precision.load_dtype)
        notes.append(f"torch_dtype -> dtype: {keys.torch_dtype}")
    for trl_name, ours in _DATA_RENAMES.items():
        value = getattr(keys, trl_name)
        if value is None:
            continue
        holder = next((s for s in settings if ours in {f.name for f in dataclasses.fields(s)}), None)
        if holder is None:
            raise ValueError(f"{trl_name}: this recipe reads no {ours} (its corpus keys are its own): remove "
                             f"{trl_name}, or run the config with the sft recipe (recipe: sft), which reads "
                             f"{', '.join(_DATA_RENAMES)} as TRL does.")
        setattr(holder, ours, value)
        notes.append(f"{trl_name} -> {ours}: {value}")
    return notes


class PLMParser:
    """``trl.TrlParser`` over the run settings, a recipe's corpus, ``SFTConfig`` (``DPOConfig`` for a preference
    recipe) and ``TrlKeys``, with
    plm-tune's config rules (``recipe:`` dropped, TRL's keys turned, an unknown key listing the valid ones).

    Built by ``plm_tune.apps.finetune.recipe_parser``; ``parse_args_and_config`` returns the dataclasses in the
    order given, without ``TrlKeys``.
    """

    def __init__(self, dataclass_types: Iterable[type], **defaults: Any) -> None:
        from transformers import TrainingArguments
        from trl import TrlParser

        self.types = tuple(dataclass_types)
        # The trainer's config (SFTConfig, DPOConfig): its fields are only summarised in the unknown-key error.
        self.config_name = next((cls.__name__ for cls in self.types if issubclass(cls, TrainingArguments)),
                                "SFTConfig")
        self._parser = TrlParser((*self.types, TrlKeys))
        # TRL writes `--use_peft` without a value; a None default would make argparse want one.
        for action in self._parser._actions:
            if action.dest in {"use_peft", "use_dora", "load_in_4bit", "load_in_8bit", "dataset_streaming"}:
                action.nargs, action.const = "?", True
        self._parser.set_defaults(**defaults)
        self.default_method = defaults.get("method", "lora")

    def set_defaults(self, **defaults: Any) -> None:
        """New defaults for fields (a config's values are defaults the command line overrides)."""
        self._parser.set_defaults(**defaults)
        self.default_method = defaults.get("method", self.default_method)

    def valid_keys(self) -> dict[str, list[str]]:
        """``{dataclass name: its keys}`` for every dataclass parsed."""
        return {cls.__name__: [f.name for f in dataclasses.fields(cls) if f.init] for cls in (*self.types, TrlKeys)}

    def unknown_key_error(self, unknown: Iterable[str], where: str) -> ValueError:
        """The error for ``unknown`` keys: each with its nearest valid key, then every valid one but the trainer
        config's (``SFTConfig``'s or ``DPOConfig``'s), which are named by example."""
        keys, config = self.valid_keys(), self.config_name
        ours = [key for name, names in keys.items() if name != config for key in names]
        valid = [key for names in keys.values() for key in names]
        named = []
        for key in sorted(unknown):  # plm-tune's keys first: `lora_rank` is a near miss of lora_r, not local_rank
            near = difflib.get_close_matches(key, ours, n=1, cutoff=0.6) or difflib.get_close_matches(key, valid, n=1,
                                                                                                     cutoff=0.75)
            named.append(f"{key} (did you mean {near[0]}?)" if near else key)
        listed = "; ".join(f"{name}: {', '.join(names)}" for name, names in keys.items() if name != config)
        examples = "beta, loss_type, " if config == "DPOConfig" else ""
        return ValueError(f"Unknown key(s) {', '.join(named)} {where}. Valid keys: {listed}; and any trl.{config} "
                          f"field ({examples}per_device_train_batch_size, max_length, learning_rate, ...); plus "
                          f"{RECIPE_KEY}.")

    def parse_args_and_config(self, args: Sequence[str] | None = None) -> tuple[Any, ...]:
        """The dataclasses from ``--config FILE`` (optional) and the command line (which wins).

        Raises:
            ValueError: an unknown key or flag (listing the valid ones), a bad value, a TRL key in conflict.
        """
        args = list(sys.argv[1:] if args is None else args)
        if "--config" in args:
            at = args.index("--config")
            if at + 1 >= len(args):
                raise ValueError("--config needs a file: --config CONFIG.yaml")
            path = args[at + 1]
            del args[at:at + 2]
            config = read_config(path)
            config.pop(RECIPE_KEY, None)
            for key, value in (config.pop("env", None) or {}).items():  # TRL's env: section
                os.environ[key] = str(value)
            known = {key for names in self.valid_keys().values() for key in names}
            unknown = [key for key in config if key not in known]
            if unknown:
                raise self.unknown_key_error(unknown, f"in {path}")
            self._parser.set_defaults(**config)
        try:
            *parsed, remaining = self._parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
        except SystemExit as exit_:  # argparse's own usage error (a bad value): its message is on stderr
            raise SystemExit(exit_.code) from None
        if remaining:
            flags = [arg[2:].split("=")[0] for arg in remaining if arg.startswith("--")]
            raise self.unknown_key_error(flags or remaining, "on the command line")
        return self._finish(parsed)

    def parse_dict(self, config: dict[str, Any]) -> tuple[Any, ...]:
        """The dataclasses from a mapping of keys (no command line): ``plm-tune plan`` on a data config.

        Raises:
            ValueError: as ``parse_args_and_config``.
        """
        config = {key: value for key, value in config.items() if key != RECIPE_KEY}
        known = {key for names in self.valid_keys().values() for key in names}
        unknown = [key for key in config if key not in known]
        if unknown:
            raise self.unknown_key_error(unknown, "in the config")
        # set_defaults' values (the recipe's own defaults, bf16 for this machine): argparse keeps them in _defaults
        defaults = {key: value for key, value in self._parser._defaults.items() if key in known}
        return self._finish(list(self._parser.parse_dict({**defaults, **config})))

    def _finish(self, parsed: list[Any]) -> tuple[Any, ...]:
        keys = parsed.pop()  # TrlKeys: last
        for note in apply_trl_keys(keys, parsed, self.default_method):
            print(f"TRL key read: {note}", file=sys.stderr)
        # Every setting checked now, before a recipe reads its corpus (finetune() checks again, for Python callers).
        from transformers import TrainingArguments  # imported already: the parser is TRL's

        by_class = {type(settings).__name__: settings for settings in parsed}
        check_settings(by_class.get("ModelArguments"), by_class.get("MediaArguments"),
                       next((s for s in parsed if isinstance(s, TrainingArguments)), None), by_class.get("EvalArguments"))
        if "DPOConfig" in by_class:  # beta, loss_type, label_smoothing: TRL itself would fail late or not at all
            from plm_tune.apps.dpo_settings import check_dpo_settings

            check_dpo_settings(by_class["DPOConfig"])
        return tuple(parsed)


def recipe_of(config: dict[str, Any], where: str | os.PathLike) -> str | None:
    """The recipe a config names (``recipe: NAME``), or None."""
    name = config.get(RECIPE_KEY)
    if name is not None and not isinstance(name, str):
        raise ValueError(f"{where}: {RECIPE_KEY} must be a recipe name (e.g. radiology_lora); got {name!r}.")
    return Path(name).stem if name else None
