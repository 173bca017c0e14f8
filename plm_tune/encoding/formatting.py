"""PLM chat formatting with exact label masks, built segment by segment.

Token ids are assembled from pieces, never found by searching rendered text: structural special tokens by
id, each text tokenised on its own (with special-token spelling disabled, so a caption that contains
``<|eot_id|>`` is plain text), each media placeholder expanded to its exact token count. Labels therefore
follow from construction.

The layout is PLM's chat template (``plm_tune.modeling.testing.PLM_CHAT_TEMPLATE``)::

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>   ... one block per message
    <|start_header_id|>assistant<|end_header_id|>\\n\\n                    (generation prompt, optional)

Where the template is right we match it token for token. Where it is wrong we do what it means:

* string content: the template iterates over the characters and renders nothing; we render the text.
* a system message given as a list of parts: the template prints the Python list; we join its text parts.

Media placement follows PLM's trainer (perception_models ``core/data/conversation.py``,
``Conversation.get_conversation_dict_list``): a sample's single image or video opens its turn, before the
text (as the template also does: every image, then every video, first); a sample of several images keeps
them where they were written (the trainer's ``multi_image`` path, for interleaved prompts such as "compare
<image> with <image>", where the template would move them). ``keep_media_order=True`` keeps every sample's
media where written.

Labels (``train_on``): ``"assistant"`` (default) labels each answer and its ``<|eot_id|>``; ``"plm"`` labels
what PLM's trainer labels (``apps/plm/tokenizer.py``, ``PLMTokenizer.__call__``: the whole assistant block,
header included, and the ``<|end_of_text|>`` its template appends after the last answer); ``"all"`` labels
every token but the media (the model card's script). The default departs from PLM's trainer on purpose: the
header is the same fixed tokens after every user turn, so training on it teaches nothing a finetune needs,
and ``<|end_of_text|>`` is a token PLM's chat template never writes, so a model finetuned to emit it after
``<|eot_id|>`` learns a habit generation never uses (``generate`` stops at ``<|eot_id|>``).

Each text part is stripped of surrounding whitespace, as the template's ``| trim`` does, and adjacent text
parts (after media placement) are glued without a separator, as the template renders them, then tokenised as
one string: tokenising them one by one gives the same text but, with a real BPE (Llama 3's), other tokens
where they meet ("Because." + "Why?" is "Because", ".", "Why", "?" apart but "Because", ".W", "hy", "?" glued;
"2024" + "12345" is "202", "4", "123", "45" apart but "202", "412", "345" glued).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from plm_tune.arguments import TRAIN_ON, MediaArguments, TrainOn
from plm_tune.data.sample import Part, Turn

__all__ = ["TrainOn", "EncodedConversation", "ConversationEncoder", "DEFAULT_SYSTEM_PROMPT", "media_first"]

IGNORE_INDEX = -100
_TEXT_CACHE_SIZE = 4096  # texts whose token ids a ConversationEncoder keeps

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)


@dataclass
class EncodedConversation:
    """Token ids and labels of one conversation, plus the block structure used for truncation.

    ``blocks[i]`` is ``(start, end)`` of message ``i`` (after the system prefix): where it starts, and the
    length of the conversation cut after it (its last token, plus the closing ``<|end_of_text|>`` that
    ``train_on="plm"`` adds after an answer); ``prefix_len`` is the length of ``<|begin_of_text|>`` + the
    system block.
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
        keep_media_order: keep every medium where it was written, instead of placing them as PLM's trainer
            did (module docstring).
    """

    def __init__(self, tokenizer, default_system_prompt: str = DEFAULT_SYSTEM_PROMPT, *,
                 keep_media_order: bool = MediaArguments.keep_media_order) -> None:
        self.tokenizer = tokenizer
        self.keep_media_order = keep_media_order
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
        end_of_text = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
        self.end_of_text_id = None if end_of_text in (None, tokenizer.unk_token_id) else end_of_text
        self._header_cache: dict[str, list[int]] = {}
        # A sample planned then cut or fitted is encoded twice (plm_tune.encoding.sample_plan); its texts are tokenised once.
        self._text_cache: dict[str, list[int]] = {}
        self._system_prefix = self._system_block(default_system_prompt)

    def text_ids(self, text: str) -> list[int]:
        """Tokenise plain text; special-token spellings stay plain text."""
        if not text:
            return []
        if text not in self._text_cache:
            if len(self._text_cache) >= _TEXT_CACHE_SIZE:
                self._text_cache.clear()  # a bound on memory, not a policy: recent texts come back at once
            self._text_cache[text] = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return list(self._text_cache[text])

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
        train_on: TrainOn = MediaArguments.train_on,
        add_generation_prompt: bool = False,
    ) -> EncodedConversation:
        """Encode a conversation.

        Args:
            turns: from ``plm_tune.data.sample.normalize_messages``.
            media_token_counts: ``{"image": [tokens of image 0, ...], "video": [...]}``, the exact number of
                placeholder tokens each media item expands to.
            train_on: ``"assistant"``: label each assistant turn's content and its closing ``<|eot_id|>``;
                ``"plm"``: also its header, and a closing ``<|end_of_text|>`` after the last answer (PLM's
                trainer); ``"all"``: label every token except media placeholders (the model card's baseline).
            add_generation_prompt: append an open assistant header (for generation; nothing labelled there).

        Returns:
            ``EncodedConversation`` with ``len(input_ids) == len(labels)``.
        """
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}.")
        if train_on == "plm" and self.end_of_text_id is None:
            raise ValueError("train_on='plm' needs the tokenizer's <|end_of_text|> token, and this one has none.")
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
        # PLM's trainer keeps several images where written; one medium (or images with a video) opens its turn.
        several_images = len(media_token_counts.get("image", ())) > 1 and not media_token_counts.get("video")
        keep_order = self.keep_media_order or several_images
        closes = train_on == "plm" and not add_generation_prompt
        for turn in body:
            start = len(input_ids)
            content_trained = train_on == "all" or turn.role == "assistant"
            emit(self.header(turn.role), train_on == "all" or (train_on == "plm" and turn.role == "assistant"))
            text = ""  # adjacent text parts, glued as the template renders them, then tokenised once
            for part in (*(turn.parts if keep_order else media_first(turn.parts)), None):
                if part is not None and part.kind == "text":
                    text += part.text.strip()
                    continue
                emit(self.text_ids(text), content_trained)
                text = ""
                if part is not None:
                    count = media_token_counts[part.kind][part.index]
                    emit([self.media_ids[part.kind]] * count, False)  # media tokens are inputs, never targets
            emit([self.eot_id], content_trained)
            blocks.append((start, len(input_ids) + (1 if closes and turn.role == "assistant" else 0)))
        if closes and body and body[-1].role == "assistant":
            emit([self.end_of_text_id], True)
        if add_generation_prompt:
            emit(self.header("assistant"), False)
        return EncodedConversation(input_ids, labels, prefix_len=len(prefix), blocks=blocks)


def media_first(parts: Sequence[Part]) -> list[Part]:
    """A turn's parts as PLM's chat template orders them: every image, then every video, then the text."""
    return sorted(parts, key=lambda part: ("image", "video", "text").index(part.kind))
