"""The finetuning methods: the one list of their names, and the words every message, card and report uses for each.

``load_model`` implements them; ``ModelArguments``, ``plm-tune plan --method``, ``write_training_info``,
``estimate_memory``, the model card and the HTML report all read the list and the words from here, so a method
is added or renamed in one place. This module imports nothing from plm-tune, so anything may import it.

Example:
    >>> METHODS
    ('lora', 'dora', 'qlora', 'full')
    >>> METHOD_WORDS["qlora"].label
    'QLoRA (LoRA on a language model quantised to 4-bit NF4)'
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

__all__ = ["METHODS", "METHOD_WORDS", "Method", "MethodWords", "methods_help"]

# Type checkers need the names spelled out here; METHODS is read from it, never written a second time.
Method = Literal["lora", "dora", "qlora", "full"]
METHODS: tuple[Method, ...] = get_args(Method)


class MethodWords(NamedTuple):
    """How people call one method, in the three places plm-tune writes about it."""

    name: str  # its usual name: load_model's per-part summary ("language 5.64M (QLoRA)")
    meaning: str | None  # what the name does not say, in help texts and on the model card; None: nothing
    trained: str  # what a run of it trained, completing the report's "Trained ..." sentence

    @property
    def label(self) -> str:
        """The name with its meaning, as the model card's "Method" line shows it."""
        return f"{self.name} ({self.meaning})" if self.meaning else self.name


METHOD_WORDS: dict[Method, MethodWords] = {
    "lora": MethodWords("LoRA", None, "a LoRA adapter"),
    "dora": MethodWords("DoRA", "weight-decomposed LoRA", "a DoRA adapter"),
    "qlora": MethodWords("QLoRA", "LoRA on a language model quantised to 4-bit NF4", "a QLoRA adapter (4-bit base)"),
    "full": MethodWords("full finetuning", None, "all unfrozen weights (full finetune)"),
}


def methods_help() -> str:
    """The methods for a help text: ``"lora / dora (weight-decomposed LoRA) / qlora (...) / full"``."""
    return " / ".join(f"{method} ({words.meaning})" if words.meaning else method
                      for method, words in METHOD_WORDS.items())
