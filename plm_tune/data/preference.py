"""The canonical preference sample: a shared prompt, a chosen and a rejected answer (TRL's conversational
preference layout, extended to video as SFT samples are).

A preference sample is a plain dict, like the SFT sample of ``plm_tune.data.sample``; it is one when it has a
``"chosen"`` key::

    {
        "messages": [                                   # the shared prompt: it ends with a user turn
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        ],
        "chosen":   [{"role": "assistant", "content": "Red."}],     # exactly one assistant message
        "rejected": [{"role": "assistant", "content": "Blue."}],    # exactly one assistant message
        "images": ["shape.png"], "videos": [],          # shared by both answers, consumed by the prompt's parts
        "max_tiles": 4, "num_frames": 8,                # optional, as in SFT samples
    }

An answer's ``content`` is a string or a list of text parts: media belong to the prompt. ``pair_conversations``
turns the sample into the two SFT-shaped samples (prompt + chosen, prompt + rejected) that share one
``images`` / ``videos`` list, so everything that formats an SFT sample formats each side of a pair the same way.
"""

from __future__ import annotations

from typing import Any

from plm_tune.data.sample import MEDIA_KINDS, describe_sample, is_blank, normalize_messages, validate_sample
from plm_tune.errors import DataError, Reason

__all__ = ["ANSWER_KEYS", "is_preference_sample", "pair_conversations", "validate_preference_sample"]

ANSWER_KEYS = ("chosen", "rejected")


def is_preference_sample(sample: Any) -> bool:
    """Whether ``sample`` is a preference sample: a dict with a ``"chosen"`` key.

    Example:
        >>> is_preference_sample({"messages": [], "chosen": [], "rejected": []}), is_preference_sample({"messages": []})
        (True, False)
    """
    return isinstance(sample, dict) and "chosen" in sample


def pair_conversations(sample: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two SFT-shaped samples of a preference sample: prompt + chosen, and prompt + rejected.

    Both keep the sample's other keys (``id``, ``max_tiles``, ``num_frames``) and share its ``images`` and
    ``videos`` objects (not copies), so a pair's media are read once by whoever reads them. The answers are
    not checked here (``validate_preference_sample`` does).

    Example:
        >>> pair = {"messages": [{"role": "user", "content": "Hi"}], "images": [],
        ...         "chosen": [{"role": "assistant", "content": "Hello."}],
        ...         "rejected": [{"role": "assistant", "content": "Go away."}]}
        >>> chosen, rejected = pair_conversations(pair)
        >>> [m["content"] for m in rejected["messages"]], chosen["images"] is rejected["images"]
        (['Hi', 'Go away.'], True)
    """
    shared = {key: value for key, value in sample.items() if key not in ANSWER_KEYS and key != "messages"}
    prompt = list(sample.get("messages") or [])
    return tuple({**shared, "messages": prompt + list(sample.get(key) or [])} for key in ANSWER_KEYS)


def validate_preference_sample(sample: dict[str, Any], *, decode_media: bool = True) -> None:
    """Check that ``sample`` is a well-formed preference sample; raise a helpful error if not.

    The prompt must end with a user turn; ``chosen`` and ``rejected`` must each be exactly one assistant
    message with visible text (``is_blank``) and no media; the two answers must differ (identical ones, after
    surrounding whitespace, give the pair no preference to learn). Then each of ``pair_conversations``' two
    samples must pass ``validate_sample`` (the media are decoded once, for the chosen side).

    Args:
        sample: the preference sample dict (module docstring).
        decode_media: also open every image and the first frame of every video.

    Raises:
        DataError: naming the sample and the answer, with a ``Reason``: ``INVALID_CONVERSATION`` (a prompt that
            does not end with a user turn, an answer that is not one assistant message), ``INVALID_SAMPLE`` (a
            missing answer), ``NO_ANSWER_TEXT`` (a blank answer), ``MEDIA_IN_ANSWER``, ``IDENTICAL_ANSWERS``, or
            whatever ``validate_sample`` raises for either conversation.

    Example:
        >>> validate_preference_sample({"messages": [{"role": "user", "content": "2+2?"}],
        ...                             "chosen": [{"role": "assistant", "content": "4"}],
        ...                             "rejected": [{"role": "assistant", "content": "4 "}]})
        Traceback (most recent call last):
        ...
        plm_tune.errors.DataError: chosen and rejected are the same answer ('4'): the pair teaches nothing. ...
    """
    if not isinstance(sample, dict):
        raise DataError(Reason.INVALID_SAMPLE,
                        f"A preference sample must be a dict with 'messages', 'chosen' and 'rejected', "
                        f"got {type(sample).__name__}.")
    name = describe_sample(sample)
    sid = f"sample{name}: " if name else ""
    turns = normalize_messages(sample, require_answer=False)  # the prompt's structure and its media counts
    if turns[-1].role != "user":
        raise DataError(Reason.INVALID_CONVERSATION,
                        f"{sid}the prompt ends with a {turns[-1].role} message; a preference prompt ends with the "
                        "user turn that 'chosen' and 'rejected' answer. Move its last answer into 'chosen' / "
                        "'rejected', or remove it.")
    texts = [_answer_text(sample, key, sid) for key in ANSWER_KEYS]
    if texts[0].strip() == texts[1].strip():
        raise DataError(Reason.IDENTICAL_ANSWERS,
                        f"{sid}chosen and rejected are the same answer ({_short(texts[0].strip())}): the pair "
                        "teaches nothing.", "Give a different rejected answer, or drop the sample.")
    chosen, rejected = pair_conversations(sample)
    validate_sample(chosen, decode_media=decode_media)
    validate_sample(rejected, decode_media=False)  # the same media objects: decoded once is enough


def _answer_text(sample: dict[str, Any], key: str, sid: str) -> str:
    """The visible text of ``sample[key]``, checked to be one assistant message of text parts."""
    answer = sample.get(key)
    if answer is None:
        raise DataError(Reason.INVALID_SAMPLE, f"{sid}no '{key}' answer: a preference sample has both 'chosen' and "
                        "'rejected'.", f"Add '{key}': [{{'role': 'assistant', 'content': ...}}], or drop the sample.")
    if not isinstance(answer, list | tuple) or len(answer) != 1 or not isinstance(answer[0], dict):
        count = f"{len(answer)} items" if isinstance(answer, list | tuple) else type(answer).__name__
        raise DataError(Reason.INVALID_CONVERSATION,
                        f"{sid}'{key}' must be a list of exactly one assistant message, got {count}.",
                        f"Write '{key}': [{{'role': 'assistant', 'content': ...}}]; earlier turns belong in "
                        "'messages'.")
    message = answer[0]
    if message.get("role") != "assistant":
        raise DataError(Reason.INVALID_CONVERSATION,
                        f"{sid}'{key}' is a message from {message.get('role')!r}, not the assistant.",
                        f"Give '{key}' the role 'assistant'.")
    content = message.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if isinstance(parts, list | tuple):
        media = [p.get("type") for p in parts if isinstance(p, dict) and p.get("type") in MEDIA_KINDS]
        if media:
            raise DataError(Reason.MEDIA_IN_ANSWER,
                            f"{sid}'{key}' holds {len(media)} {media[0]} part(s); an answer is text only.",
                            "Put the media in the prompt's user turn ('messages').")
        text = "".join(p.get("text") for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
        if is_blank(text):
            shown = f": its text {text!r} is only invisible characters" if text.strip() else ""
            raise DataError(Reason.NO_ANSWER_TEXT, f"{sid}'{key}' is empty{shown}.",
                            f"Fill in the {key} answer, or drop the sample.")
        return text
    raise DataError(Reason.INVALID_CONVERSATION,
                    f"{sid}'{key}' content must be a string or a list of text parts, got {type(content).__name__}.")


def _short(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")
