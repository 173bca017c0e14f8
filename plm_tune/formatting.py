"""PLM chat formatting with exact label masks, built segment by segment.

Token ids are assembled from pieces, never found by searching rendered text: structural special tokens by
id, each text tokenised on its own (with special-token spelling disabled, so a caption that contains
``<|eot_id|>`` is plain text), each media placeholder expanded to its exact token count. Labels therefore
follow from construction.

The layout is PLM's chat template (``plm_tune.testing.PLM_CHAT_TEMPLATE``)::

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>   ... one block per message
    <|start_header_id|>assistant<|end_header_id|>\\n\\n                    (generation prompt, optional)

Where the template is right we match it token for token. Where it is wrong we do what it means:

* string content: the template iterates over the characters and renders nothing; we render the text.
* media order: the template moves all images, then all videos, before the message's text; we keep the
  order of the parts as given (they are the same when media come first, the usual case).
* a system message given as a list of parts: the template prints the Python list; we join its text parts.

Each text part is stripped of surrounding whitespace, as the template's ``| trim`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from plm_tune.sample import Turn

__all__ = ["TrainOn", "EncodedConversation", "ConversationEncoder", "DEFAULT_SYSTEM_PROMPT"]

TrainOn = Literal["assistant", "all"]
IGNORE_INDEX = -100

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)


@dataclass
class EncodedConversation:
    """Token ids and labels of one conversation, plus the block structure used for truncation.

    ``blocks[i]`` is the (start, end) token span of message ``i`` (after the system prefix); ``prefix_len``
    is the length of ``<|begin_of_text|>`` + the system block.
    """

    input_ids: list[int]
    labels: list[int]
    prefix_len: int
    blocks: list[tuple[int, int]] = field(default_factory=list)


class ConversationEncoder:
    """Turns normalised turns into PLM token ids and labels for one tokenizer.

    Args:
        tokenizer: PLM's tokenizer (must know ``<|begin_of_text|>``, ``<|start_header_id|>``,
            ``<|end_header_id|>``, ``<|eot_id|>``, ``<|image|>``, ``<|video|>``).
        default_system_prompt: used when a conversation has no system message (PLM's own default).
    """

    def __init__(self, tokenizer, default_system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> None:
        self.tokenizer = tokenizer
        ids = {}
        for name in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                     "<|image|>", "<|video|>"):
            token_id = tokenizer.convert_tokens_to_ids(name)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"The tokenizer has no {name} token: is this a PLM processor?")
            ids[name] = token_id
        self.bos_id = ids["<|begin_of_text|>"]
        self.start_header_id = ids["<|start_header_id|>"]
        self.end_header_id = ids["<|end_header_id|>"]
        self.eot_id = ids["<|eot_id|>"]
        self.media_ids = {"image": ids["<|image|>"], "video": ids["<|video|>"]}
        self._header_cache: dict[str, list[int]] = {}
        self._system_prefix = self._system_block(default_system_prompt)

    def text_ids(self, text: str) -> list[int]:
        """Tokenise plain text; special-token spellings stay plain text."""
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def header(self, role: str) -> list[int]:
        """``<|start_header_id|>{role}<|end_header_id|>\\n\\n`` as ids."""
        if role not in self._header_cache:
            self._header_cache[role] = (
                [self.start_header_id] + self.text_ids(role) + [self.end_header_id] + self.text_ids("\n\n")
            )
        return self._header_cache[role]

    def _system_block(self, system_text: str) -> list[int]:
        return [self.bos_id] + self.header("system") + self.text_ids(system_text.strip()) + [self.eot_id]

    def encode(
        self,
        turns: Sequence[Turn],
        media_token_counts: dict[str, Sequence[int]],
        *,
        train_on: TrainOn = "assistant",
        add_generation_prompt: bool = False,
    ) -> EncodedConversation:
        """Encode a conversation.

        Args:
            turns: from ``plm_tune.sample.normalize_messages``.
            media_token_counts: ``{"image": [tokens of image 0, ...], "video": [...]}``, the exact number of
                placeholder tokens each media item expands to.
            train_on: ``"assistant"``: label each assistant turn's content and its closing ``<|eot_id|>``;
                ``"all"``: label every token except media placeholders (the model card's baseline).
            add_generation_prompt: append an open assistant header (for generation; nothing labelled there).

        Returns:
            ``EncodedConversation`` with ``len(input_ids) == len(labels)``.
        """
        if train_on not in ("assistant", "all"):
            raise ValueError(f"train_on must be 'assistant' or 'all', got {train_on!r}.")
        input_ids: list[int] = []
        labels: list[int] = []

        def emit(ids: list[int], trained: bool) -> None:
            input_ids.extend(ids)
            labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))

        body = list(turns)
        if body and body[0].role == "system":
            prefix = self._system_block("".join(p.text.strip() for p in body[0].parts))
            body = body[1:]
        else:
            prefix = self._system_prefix
        emit(prefix, train_on == "all")
        blocks = []
        for turn in body:
            start = len(input_ids)
            content_trained = train_on == "all" or turn.role == "assistant"
            emit(self.header(turn.role), train_on == "all")
            for part in turn.parts:
                if part.kind == "text":
                    emit(self.text_ids(part.text.strip()), content_trained)
                else:
                    count = media_token_counts[part.kind][part.index]
                    emit([self.media_ids[part.kind]] * count, False)  # media tokens are inputs, never targets
            emit([self.eot_id], content_trained)
            blocks.append((start, len(input_ids)))
        if add_generation_prompt:
            emit(self.header("assistant"), False)
        return EncodedConversation(input_ids, labels, prefix_len=len(prefix), blocks=blocks)
