"""Answers from a (finetuned) PLM for canonical samples: batched, left-padded, the training formatting.

Each sample is encoded by ``PLMCollator.encode_prompt``: the same token layout as training, ending on an open
assistant header, with a trailing assistant message kept aside as the reference. Rows are left-padded so that
every row's first new token follows its own prompt, and generation stops on PLM's end tokens
(``<|eot_id|>``, ``<|end_of_text|>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from plm_tune.arguments import MAX_NEW_TOKENS
from plm_tune.data.frame_selection import NUM_FRAMES
from plm_tune.encoding.collator import EncodedSample, PLMCollator
from plm_tune.modeling.precision import mixed_precision_context, vision_dtype

__all__ = ["generate", "Generation", "end_token_ids", "left_pad"]

END_TOKENS = ("<|eot_id|>", "<|end_of_text|>")


@dataclass
class Generation:
    """One generated answer next to what the sample expected."""

    answer: str
    reference: str | None
    prompt_tokens: int
    new_tokens: int
    token_ids: list[int]  # the answer's ids, without the end token


def end_token_ids(tokenizer: Any) -> list[int]:
    """PLM's end-of-answer ids: ``<|eot_id|>`` closes a turn, ``<|end_of_text|>`` the document."""
    return [tokenizer.convert_tokens_to_ids(token) for token in END_TOKENS]


def left_pad(encoded: Sequence[EncodedSample], pad_token_id: int, pixel_dtype: torch.dtype) -> dict[str, Any]:
    """Prompts -> one batch padded on the left (ids, mask, and tiles / frames in token order)."""
    longest = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, e in enumerate(encoded):
        input_ids[row, longest - len(e.input_ids):] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, longest - len(e.input_ids):] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    tiles = [t for e in encoded for t in e.images]
    if tiles:
        batch["pixel_values"] = torch.cat(tiles).unsqueeze(0).to(pixel_dtype)
    frames = [f for e in encoded for f in e.videos]
    if frames:
        batch["pixel_values_videos"] = torch.cat(frames).unsqueeze(0).to(pixel_dtype)
    return batch


@torch.no_grad()
def generate(
    model: Any,
    processor: Any,
    samples: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tiles: int | None = None,
    num_frames: int = NUM_FRAMES,
    collator: PLMCollator | None = None,
    details: bool = False,
    progress: bool = True,
    synced_gpus: bool = False,
) -> list[str] | list[Generation]:
    """Generate an answer for each canonical sample.

    Args:
        model: a PLM (``PerceptionLMForConditionalGeneration``, a ``PeftModel`` around one, or a merged model).
        processor: its processor.
        samples: canonical samples (a list or a ``datasets.Dataset``). A trailing assistant message is taken as
            the reference, not as input; a sample may also end on a user message.
        max_new_tokens: longest answer, in tokens.
        batch_size: prompts per ``model.generate`` call.
        do_sample: False: greedy (reproducible); True: sample with ``temperature`` and ``top_p``.
        max_tiles, num_frames: per-image tiles and per-video frames when the sample does not set them (use the
            values the model was trained with).
        collator: the training collator, to reuse its exact settings (``max_tiles`` etc. are then ignored).
        details: return ``Generation`` records (answer, reference, token counts) instead of strings.
        progress: show a progress bar.
        synced_gpus: under DeepSpeed ZeRO-3 every process must call this with the same samples and
            ``synced_gpus=True``: each holds a shard of the weights, so all keep stepping until every row ends.

    Returns:
        One answer per sample, in order, decoded without special tokens and stripped.

    Example:
        >>> answers = generate(model, processor, [{"messages": [{"role": "user", "content": [
        ...     {"type": "image"}, {"type": "text", "text": "Describe it."}]}], "images": ["xray.png"]}])  # doctest: +SKIP
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    collator = collator or PLMCollator(processor, max_tiles=max_tiles, num_frames=num_frames)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    pixel_dtype = vision_dtype(model)
    end_ids = end_token_ids(tokenizer)
    options: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    else:  # a model's generation_config may say to sample: greedy means greedy
        options.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    results: list[Generation] = []
    try:
        bar = tqdm(total=len(samples), desc="generating", unit="sample", disable=not progress)
        for start in range(0, len(samples), batch_size):
            chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
            prompts = [collator.encode_prompt(sample) for sample in chunk]
            batch = left_pad([encoded for encoded, _ in prompts], collator.pad_token_id, pixel_dtype)
            batch = {key: value.to(device) for key, value in batch.items()}
            with mixed_precision_context(model):  # bf16 frozen + float32 trained weights: as in training
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=end_ids,
                    pad_token_id=collator.pad_token_id,
                    synced_gpus=synced_gpus,
                    **options,
                )
            prompt_length = batch["input_ids"].shape[1]
            for row, (encoded, reference) in enumerate(prompts):
                new = output[row, prompt_length:].tolist()
                ended = [i for i, token in enumerate(new) if token in end_ids]
                new = new[: ended[0]] if ended else new
                results.append(Generation(
                    answer=tokenizer.decode(new, skip_special_tokens=True).strip(),
                    reference=reference,
                    prompt_tokens=len(encoded.input_ids),
                    new_tokens=len(new),
                    token_ids=new,
                ))
            bar.update(len(chunk))
        bar.close()
    finally:
        model.train(was_training)
    return results if details else [r.answer for r in results]
