"""``PLMCollator``: canonical samples -> a model-ready PLM batch.

Per sample, two steps: ``plan`` (``plm_tune.encoding.sample_plan``: from media headers, the turns kept under the
``max_length`` policy, the tiles of each image and frames of each video, the token ids with exact labels), then
``build``: each image / video of a kept turn decoded and processed once, at its planned size, and checked
against the plan. ``encode`` is both and counts nothing; ``__call__`` counts what the policy did. Per batch:
right-pad ids / labels / mask, and concatenate every image tile of the batch in token order into
``pixel_values`` ``(1, total_tiles, 3, T, T)`` (likewise frames into ``pixel_values_videos``). The model
scatters vision features into placeholder positions in order, so ragged tile and frame counts batch freely.

The collator makes no device moves (the Trainer / accelerate does that) and pickles, so it runs inside
DataLoader workers.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from plm_tune.arguments import MediaArguments
from plm_tune.data.sample import describe_sample, normalize_messages
from plm_tune.encoding.formatting import IGNORE_INDEX, TRAIN_ON, ConversationEncoder, TrainOn
from plm_tune.encoding.length_policy import Fit
from plm_tune.encoding.pixels import PixelEncoder
from plm_tune.encoding.sample_plan import (
    PlanSettings,
    SamplePlan,
    VisionInputType,
    media_error,
    plan_sample,
    read_media_sizes,
)
from plm_tune.encoding.sparse_logits import keep_labelled_logits

__all__ = ["PLMCollator", "EncodedSample", "CollatorStats"]

logger = logging.getLogger(__name__)

OnTooLong = Literal["skip", "raise"]


@dataclass
class EncodedSample:
    """One sample ready for batching."""

    input_ids: list[int]
    labels: list[int]
    images: list[torch.Tensor]  # each (n_tiles, 3, T, T), in token order
    videos: list[torch.Tensor]  # each (n_frames, 3, S, S), in token order


class CollatorStats:
    """Counters of what the collator changed or dropped, shared with DataLoader worker processes.

    The counts live in shared memory, so samples processed inside ``num_workers > 0`` workers are counted in
    the main process too. Read them with ``dict(collator.stats)`` or ``collator.stats["rejected_too_long"]``.
    """

    KEYS = (
        "samples",  # samples seen
        "batches",  # batches built
        "truncated_samples",  # samples that lost trailing turns to max_length
        "dropped_turns",  # messages dropped from those samples
        "dropped_images",  # images that were only in dropped turns
        "dropped_videos",  # videos that were only in dropped turns
        "rejected_too_long",  # samples whose first exchange alone exceeds max_length
        "fitted_samples",  # samples made to fit max_length by lowering their tiles / frames (fit_tiles, fit_frames)
        "tiles_removed",  # image tiles those samples lost (tiles asked for minus tiles kept)
        "frames_removed",  # video frames those samples lost (frames asked for minus frames kept)
        "tokens",  # real (unpadded) tokens in built batches
        "token_slots",  # token positions in built batches, padding included (rows x longest row)
        "labelled_tokens",  # tokens with a label (the loss is computed on these)
        "media_tokens",  # image / video placeholder tokens
        "placeholder_media",  # one-tile inputs added to batches without an image / video (media_in_every_batch)
    )

    def __init__(self, values: list[int] | None = None) -> None:
        self._array = multiprocessing.Array("q", values or [0] * len(self.KEYS))

    def add(self, key: str, amount: int = 1) -> None:
        if amount:
            with self._array.get_lock():
                self._array[self.KEYS.index(key)] += amount

    def __getitem__(self, key: str) -> int:
        return self._array[self.KEYS.index(key)]

    def keys(self) -> tuple[str, ...]:
        return self.KEYS

    def reset(self) -> None:
        with self._array.get_lock():
            for i in range(len(self.KEYS)):
                self._array[i] = 0

    def __repr__(self) -> str:
        return f"CollatorStats({ {k: self[k] for k in self.KEYS} })"

    def __getstate__(self) -> dict[str, Any]:
        # While a worker process is being spawned the shared array itself travels (shared counts); any
        # other pickling (copy, save) takes a snapshot of the values.
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"array": self._array}
        return {"values": list(self._array[:])}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._array = state["array"] if "array" in state else multiprocessing.Array("q", state["values"])


class PLMCollator:
    """Batch canonical samples for ``PerceptionLMForConditionalGeneration``.

    Args:
        processor: the model's ``PerceptionLMProcessor`` (``AutoProcessor.from_pretrained``).
        max_length: longest sequence in tokens (None: no limit). Media placeholders are never cut: when a
            sample is too long, whole trailing turns are dropped (as PLM's trainer does) with their media;
            if even the first exchange does not fit, the sample is rejected (``on_too_long``).
        train_on: ``"assistant"`` (default): loss only on assistant answers and their ``<|eot_id|>``;
            ``"plm"``: what PLM's trainer trains on (the assistant header too, and a closing
            ``<|end_of_text|>``; ``plm_tune.encoding.formatting`` says why it is not the default); ``"all"``: every
            non-media token, as the model card's script does.
        vision_input_type: ``"thumb+tile"`` or ``"vanilla"``; default: the processor's.
        max_tiles: tiles per image (default: the processor's ``max_num_tiles``, 36 for PLM); a sample's
            ``"max_tiles"`` key overrides it.
        num_frames: frames per video (default 32, as PLM); a sample's ``"num_frames"`` overrides it.
        multi_image_tiles: tiles per image in a sample of several images: 1 (default) one plain tile each, as
            PLM's trainer; N: a thumbnail plus up to N tiles; None: as single images (``max_tiles``).
        keep_media_order: keep each image / video where it was written. Default False: media are placed as
            PLM's trainer placed them (a single image or video opens its turn; several images stay where
            written); ``plm_tune.encoding.formatting`` has the rule.
        on_too_long: ``"skip"`` (count in ``stats["rejected_too_long"]`` and log) or ``"raise"``.
        truncate_turns: when False, a too-long sample is rejected whole instead of losing trailing turns.
        fit_tiles, fit_frames: when True, a sample longer than ``max_length`` keeps every turn and has its
            media made smaller instead, until the whole sample fits (``plm_tune.encoding.length_policy`` has the rule and
            why). ``fit_frames``: the fewest video frames are removed, from the video with the most frames,
            never below 1, and each lowered video is sampled again at its lower count by PLM's rule (its frames
            stay spread over the clip, not the first ones kept). ``fit_tiles``: image tile budgets are lowered,
            the image with the most tiles first, one grid size at a time (36 -> 25 -> 16 -> 9 -> 4 -> 1 for a
            square image); ``"vanilla"`` images have one tile already, so only thumb+tile images are fitted.
            Both on: frames go first, tiles only when 1 frame per video is still too long. A sample's
            ``"max_tiles"`` / ``"num_frames"`` stay the upper bounds. Media go before turns because that keeps
            the text (answers and later turns), usually what matters for training. Counted in
            ``stats["fitted_samples"]``, ``stats["tiles_removed"]`` and ``stats["frames_removed"]`` and logged
            per sample. If even 1 tile per image and 1 frame per video do not fit, the sample keeps the media it
            asked for and the turn policy above applies (``truncate_turns``, ``on_too_long``).
        pixel_dtype: dtype of ``pixel_values`` (use the model's dtype, e.g. ``torch.bfloat16``).
        padding_free: when True, the samples of a batch are packed into ONE row with no padding at all:
            ``input_ids`` / ``labels`` ``(1, total_tokens)``, ``position_ids`` restarting at 0 for each sample,
            the sequence boundaries ``cu_seq_lens_q`` / ``cu_seq_lens_k`` / ``max_length_q`` / ``max_length_k``
            for flash-attention's varlen kernels, ``use_cache=False`` and no ``attention_mask``. Without the
            mask, transformers finds the samples from ``position_ids`` and attention never crosses them
            (flash-attention varlen on a GPU; an equivalent block-diagonal causal mask with ``sdpa`` /
            ``eager``). Each sample's first label is ignored (it would be predicted from the previous sample;
            unpacked, nothing predicts it either), so the loss is the unpacked one. Pixels are unchanged (the
            model fills placeholders in order). ``max_length`` still applies per sample. With ``sdpa`` /
            ``eager`` that mask is ``total_tokens**2`` booleans and attention runs over the whole row, so
            packing only pays with flash-attention (README, Performance); elsewhere prefer length grouping.
        media_in_every_batch: kinds of media (``"image"``, ``"video"``) that every batch carries. A batch without
            one gets the smallest input of that kind (``PixelEncoder.placeholder``: one tile, one frame) as a
            sequence of its own (padded: an extra row; packed: an extra segment), with no label, attended by no
            other token: the loss and every sample's logits are unchanged. Needed when weights are sharded over
            processes (DeepSpeed ZeRO-3, FSDP): each process gathers the vision tower's weights when it runs it, so
            a process whose batch skips the tower leaves the others waiting (a hang). ``build_trainer`` sets it
            there. Counted in ``stats["placeholder_media"]``; not in the token counts.
        labelled_logits_only: add ``logits_to_keep`` and ``shift_labels`` (``plm_tune.encoding.sparse_logits``), so
            ``model(**batch)`` projects onto the vocabulary only the positions that predict a labelled token
            (same loss, ``logits`` ``(batch, K, vocab)``). For your own loops; ``build_trainer`` refuses it, as
            it does the same itself (its ``labelled_logits_only``).

    Example:
        >>> collator = PLMCollator(processor, max_length=4096)                    # doctest: +SKIP
        >>> batch = collator([sample_a, sample_b])                                # doctest: +SKIP
        >>> model(**batch).loss                                                   # doctest: +SKIP
    """

    def __init__(
        self,
        processor: Any,
        *,
        max_length: int | None = None,
        train_on: TrainOn = MediaArguments.train_on,
        vision_input_type: VisionInputType | None = MediaArguments.vision_input_type,
        max_tiles: int | None = MediaArguments.max_tiles,
        num_frames: int = MediaArguments.num_frames,
        multi_image_tiles: int | None = MediaArguments.multi_image_tiles,
        keep_media_order: bool = MediaArguments.keep_media_order,
        on_too_long: OnTooLong = "skip",
        truncate_turns: bool = True,
        fit_tiles: bool = MediaArguments.fit_tiles,
        fit_frames: bool = MediaArguments.fit_frames,
        pixel_dtype: torch.dtype = torch.float32,
        padding_free: bool = False,
        media_in_every_batch: tuple[str, ...] = (),
        labelled_logits_only: bool = False,
    ) -> None:
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}.")
        if on_too_long not in ("skip", "raise"):
            raise ValueError(f"on_too_long must be 'skip' or 'raise', got {on_too_long!r}.")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens or None, got {max_length}.")
        self.processor = processor
        self.encoder = ConversationEncoder(processor.tokenizer, keep_media_order=keep_media_order)
        self.pixels = PixelEncoder(processor, vision_input_type=vision_input_type, max_tiles=max_tiles,
                                   num_frames=num_frames, multi_image_tiles=multi_image_tiles)
        self.settings = PlanSettings(
            max_length=max_length, train_on=train_on, fit_tiles=fit_tiles, fit_frames=fit_frames,
            truncate_turns=truncate_turns, vision_input_type=self.pixels.vision_input_type,
            max_tiles=self.pixels.max_tiles, num_frames=self.pixels.num_frames,
            multi_image_tiles=self.pixels.multi_image_tiles, tile_size=self.pixels.tile_size,
            tile_tokens=self.pixels.tile_tokens, frame_tokens=self.pixels.frame_tokens,
        )
        self.on_too_long = on_too_long
        self.pixel_dtype = pixel_dtype
        self.padding_free = padding_free
        unknown = set(media_in_every_batch) - {"image", "video"}
        if unknown:
            raise ValueError(f"media_in_every_batch takes 'image' and / or 'video', got {sorted(unknown)}.")
        self.media_in_every_batch = tuple(media_in_every_batch)
        self.labelled_logits_only = labelled_logits_only
        self.pad_token_id = processor.tokenizer.pad_token_id
        self.stats = CollatorStats()

    # ---------------------------------------------------------------- one sample
    @property
    def max_length(self) -> int | None:
        return self.settings.max_length

    @property
    def train_on(self) -> TrainOn:
        return self.settings.train_on

    @property
    def fit_tiles(self) -> bool:
        return self.settings.fit_tiles

    @property
    def fit_frames(self) -> bool:
        return self.settings.fit_frames

    @property
    def truncate_turns(self) -> bool:
        return self.settings.truncate_turns

    def plan(self, sample: dict[str, Any], *, settings: PlanSettings | None = None,
             add_generation_prompt: bool = False) -> SamplePlan:
        """What this collator will build of ``sample`` (``plm_tune.encoding.sample_plan``), from media headers only.

        ``settings`` replaces the collator's own (e.g. ``collator.settings.without_length_limit()``)."""
        settings = settings or self.settings
        turns = normalize_messages(sample)
        sizes = read_media_sizes(sample, turns, settings)
        return plan_sample(sample, turns, sizes, settings, self.encoder, add_generation_prompt=add_generation_prompt)

    def encode(self, sample: dict[str, Any], *, add_generation_prompt: bool = False) -> EncodedSample | None:
        """Plan and build one sample; None if it was rejected as too long (and ``on_too_long="skip"``).

        Nothing is counted in ``stats`` (the batches built by ``__call__`` are)."""
        return self.build(sample, self.plan(sample, add_generation_prompt=add_generation_prompt))

    def build(self, sample: dict[str, Any], plan: SamplePlan) -> EncodedSample | None:
        """Build ``plan`` (from ``plan``): decode the media of the kept turns, each once, at its planned budget.

        A rejected plan raises (``on_too_long="raise"``) or is logged and gives None; a fitted one is logged.

        Raises:
            ValueError: a media entry that cannot be decoded, naming the sample and the entry.
            RuntimeError: the processor made other tiles / frames than planned (a bug: please report it).
        """
        if plan.outcome == "rejected":
            self._reject(sample, plan.fit)
            return None
        if plan.outcome == "fitted":
            fit = plan.fit
            logger.warning("Fitted sample%s into max_length=%d by lowering its media (fit_tiles=%s, fit_frames=%s): "
                           "%s; %d -> %d tokens, every turn kept.", describe_sample(sample), self.max_length,
                           self.fit_tiles, self.fit_frames, fit.changes(), fit.full_tokens, fit.tokens)
        return EncodedSample(
            input_ids=plan.encoded.input_ids,
            labels=plan.encoded.labels,
            images=[self._image(sample, plan, i) for i in plan.images],
            videos=[self._video(sample, plan, i) for i in plan.videos],
        )

    def encode_prompt(self, sample: dict[str, Any]) -> tuple[EncodedSample, str | None]:
        """Encode a sample as a prompt to generate from, with the same formatting as training.

        A trailing assistant message is the reference answer: it is returned as text, not encoded, and the
        prompt ends on an open assistant header. A sample without one is a bare prompt (reference None).
        Media that only the reference refers to are not loaded. ``max_length`` does not apply: nothing is cut
        from a prompt.

        Returns:
            ``(encoded, reference)``; ``encoded.labels`` are all ``IGNORE_INDEX``.
        """
        turns = normalize_messages(sample, require_answer=False)
        reference = None
        if turns[-1].role == "assistant":
            reference = "".join(p.text.strip() for p in turns[-1].parts if p.kind == "text")
            turns = turns[:-1]
        if not any(t.role == "user" for t in turns):
            raise ValueError(f"sample{describe_sample(sample)} has no user message to answer.")
        settings = self.settings.without_length_limit()
        sizes = read_media_sizes(sample, turns, settings)
        plan = plan_sample(sample, turns, sizes, settings, self.encoder, add_generation_prompt=True)
        encoded = self.build(sample, plan)
        encoded.labels = [IGNORE_INDEX] * len(encoded.input_ids)
        return encoded, reference

    def _image(self, sample: dict[str, Any], plan: SamplePlan, index: int) -> torch.Tensor:
        """The tiles of image ``index``, processed once at its planned budget, checked against the plan."""
        try:
            tiles, _ = self.pixels.image(sample["images"][index], plan.image_budgets[index], plan.tiling)
        except ValueError as err:
            raise media_error(sample, "image", index, err) from err
        if tiles.shape[0] != plan.image_tiles[index] or tiles.shape[-1] != self.settings.tile_size:
            raise RuntimeError(
                f"sample{describe_sample(sample)}, images[{index}]: the image processor made {tiles.shape[0]} tiles "
                f"of {tiles.shape[-1]} px where plm-tune planned {plan.image_tiles[index]} of "
                f"{self.settings.tile_size} px (budget {plan.image_budgets[index]}, {plan.tiling}): plm_tune.encoding.tiling "
                "no longer matches this processor. Please report it with the processor's version and the image size."
            )
        return tiles

    def _video(self, sample: dict[str, Any], plan: SamplePlan, index: int) -> torch.Tensor:
        """The frames of video ``index``, decoded once at its planned count, checked against the plan."""
        try:
            frames, n_tokens = self.pixels.video(sample["videos"][index], plan.video_counts[index])
        except ValueError as err:
            raise media_error(sample, "video", index, err) from err
        if frames.shape[0] != plan.video_frames[index] or n_tokens != frames.shape[0] * self.settings.frame_tokens:
            raise RuntimeError(
                f"sample{describe_sample(sample)}, videos[{index}]: decoding gave {frames.shape[0]} frames "
                f"({n_tokens} tokens) where plm-tune planned {plan.video_frames[index]} from the video's header. "
                "Please report it with the video's codec and container."
            )
        return frames

    def _reject(self, sample: dict[str, Any], fit: Fit) -> None:
        """Raise, or log, a sample the length policy rejected (``on_too_long``)."""
        fix = ""
        if fit.first_exchange_tokens > self.max_length:
            reason = (
                f"sample{describe_sample(sample)} is too long: its first exchange needs {fit.first_exchange_tokens} "
                f"tokens (the whole sample {fit.full_tokens}) but max_length is {self.max_length}. "
                "Raise max_length, lower max_tiles / num_frames for this data, or shorten the text."
            )
        else:
            reason = (f"sample{describe_sample(sample)} has {fit.full_tokens} tokens > max_length "
                      f"{self.max_length} and truncate_turns=False.")
            fix = " Raise max_length or allow truncate_turns."
        if self.on_too_long == "raise":
            raise ValueError(reason + fix)
        logger.warning("Skipping %s", reason)

    def count(self, plan: SamplePlan) -> None:
        """Count what the max_length policy did to one sample of a batch in ``stats``."""
        fit = plan.fit
        self.stats.add("samples")
        if fit.outcome == "rejected":
            self.stats.add("rejected_too_long")
        elif fit.outcome == "truncated":
            self.stats.add("truncated_samples")
            self.stats.add("dropped_turns", plan.dropped_turns)
            self.stats.add("dropped_images", len(fit.image_tiles) - len(fit.images))
            self.stats.add("dropped_videos", len(fit.video_frames) - len(fit.videos))
        elif fit.outcome == "fitted":
            self.stats.add("fitted_samples")
            self.stats.add("tiles_removed", fit.tiles_removed)
            self.stats.add("frames_removed", fit.frames_removed)

    # ---------------------------------------------------------------- the batch
    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = self.build_batch(samples, self._plan_count_build)
        placeholders = self._placeholders(encoded)
        batch = self.pack(encoded + placeholders) if self.padding_free else self.pad(encoded + placeholders)
        self.count_batch(batch, encoded, placeholders)
        return keep_labelled_logits(batch) if self.labelled_logits_only else batch

    def _plan_count_build(self, sample: dict[str, Any]) -> EncodedSample | None:
        plan = self.plan(sample)
        self.count(plan)
        return self.build(sample, plan)

    def build_batch(self, samples: list[dict[str, Any]], build_one: Callable[[dict[str, Any]], Any],
                    noun: str = "sample") -> list[Any]:
        """``build_one(sample)`` for each sample, those it rejects as too long (None) left out.

        Raises:
            ValueError: every ``noun`` of the batch was rejected (a batch of nothing cannot be trained on).
        """
        built = [row for row in map(build_one, samples) if row is not None]
        if not built:
            raise ValueError(
                f"Every {noun} of this batch ({len(samples)}) was rejected as longer than max_length="
                f"{self.max_length}; see the warnings above. Raise max_length or filter the data first."
            )
        return built

    def count_batch(self, batch: dict[str, Any], encoded: list[EncodedSample],
                    placeholders: Sequence[EncodedSample] = ()) -> None:
        """Count a built batch (``pad`` / ``pack`` of ``encoded`` + ``placeholders``, labels still in it) in ``stats``."""
        self.stats.add("batches")
        self.stats.add("tokens", sum(len(e.input_ids) for e in encoded))
        self.stats.add("token_slots", batch["input_ids"].numel())
        self.stats.add("labelled_tokens", int((batch["labels"] != IGNORE_INDEX).sum()))
        media = sum(int((batch["input_ids"] == token).sum()) for token in self.encoder.media_ids.values())
        self.stats.add("media_tokens", media - sum(len(e.input_ids) for e in placeholders))
        self.stats.add("placeholder_media", len(placeholders))

    def _placeholders(self, encoded: list[EncodedSample]) -> list[EncodedSample]:
        """One unlabelled media-only sequence per kind in ``media_in_every_batch`` that no sample of the batch has."""
        missing = [kind for kind in self.media_in_every_batch
                   if not any(e.images if kind == "image" else e.videos for e in encoded)]
        placeholders = []
        for kind in missing:
            pixels, count = self.pixels.placeholder(kind)
            placeholders.append(EncodedSample(
                input_ids=[self.encoder.media_ids[kind]] * count, labels=[IGNORE_INDEX] * count,
                images=[pixels] if kind == "image" else [], videos=[pixels] if kind == "video" else []))
        return placeholders

    def pad(self, encoded: list[EncodedSample]) -> dict[str, torch.Tensor]:
        """Right-pad encoded samples into one batch dict."""
        longest = max(len(e.input_ids) for e in encoded)
        batch_size = len(encoded)
        input_ids = torch.full((batch_size, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
            labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return self._add_pixels(batch, encoded)

    def pack(self, encoded: list[EncodedSample]) -> dict[str, Any]:
        """Concatenate encoded samples into one row without padding (see ``padding_free``)."""
        lengths = torch.tensor([len(e.input_ids) for e in encoded])
        input_ids = torch.tensor([token for e in encoded for token in e.input_ids], dtype=torch.long)[None]
        labels = torch.tensor([label for e in encoded for label in e.labels], dtype=torch.long)[None]
        starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        # Unpacked, no position predicts a sample's first token; packed, the previous sample's last one would.
        labels[0, starts] = IGNORE_INDEX
        position_ids = torch.cat([torch.arange(n) for n in lengths.tolist()])[None]
        boundaries = torch.cat([starts, lengths.sum().reshape(1)]).to(torch.int32)
        longest = int(lengths.max())
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            # What flash-attention's varlen kernels read; computed here so the GPU never syncs to find them.
            "cu_seq_lens_q": boundaries,
            "cu_seq_lens_k": boundaries,
            "max_length_q": longest,
            "max_length_k": longest,
            # transformers detects the samples from position_ids only without a KV cache, and a forward with
            # the config's use_cache=True (eval mode) makes one: attention would then cross the samples.
            "use_cache": False,
        }
        return self._add_pixels(batch, encoded)

    def _add_pixels(self, batch: dict[str, Any], encoded: list[EncodedSample]) -> dict[str, Any]:
        # Row-major order of samples = order in which the model meets the placeholders.
        tiles = [t for e in encoded for t in e.images]
        if tiles:
            batch["pixel_values"] = torch.cat(tiles).unsqueeze(0).to(self.pixel_dtype)  # (1, total_tiles, 3, T, T)
        frames = [f for e in encoded for f in e.videos]
        if frames:
            batch["pixel_values_videos"] = torch.cat(frames).unsqueeze(0).to(self.pixel_dtype)  # (1, frames, 3, S, S)
        return batch
