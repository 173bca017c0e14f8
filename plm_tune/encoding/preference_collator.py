"""``PLMPreferenceCollator``: preference samples -> one exact batch for TRL's ``DPOTrainer``.

A preference sample is a canonical sample whose prompt (``messages``, ending with a user turn) has two answers::

    {"messages": [...system?, user, assistant, ..., user],
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [{"role": "assistant", "content": "..."}],
     "images": [...], "videos": [...], "max_tiles": ..., "num_frames": ...}      # shared by both answers

Each answer becomes the SFT sequence of ``messages + [answer]``, formatted by the same ``ConversationEncoder`` as
SFT (so token-identical to ``apply_chat_template`` where the template is right, ``plm_tune.encoding.formatting``).
Per pair, two steps as ``PLMCollator``'s: ``plan_pair`` (from media headers: both sequences, one set of media
decisions) then ``build_pair`` (the media decoded and processed ONCE, both rows referencing the same tensors).

The batch (the contract of TRL 1.16's ``DPOTrainer``, ``trl/trainer/dpo_trainer.py``: ``_compute_loss`` passes every
key but ``completion_mask`` / ``ref_chosen_logps`` / ``ref_rejected_logps`` to the model, builds
``labels = input_ids.masked_fill(completion_mask == 0, -100)`` itself, sums the per-token log-probs of each row and
splits the rows with ``.chunk(2)`` as ``[chosen, rejected]``)::

    input_ids       (2B, L)  rows [chosen_0 .. chosen_{B-1}, rejected_0 .. rejected_{B-1}], right-padded
    attention_mask  (2B, L)  1 on real tokens
    completion_mask (2B, L)  1 exactly on each row's answer and its <|eot_id|> (the last assistant turn only:
                             earlier assistant turns belong to the shared prompt)
    pixel_values         (1, 2 * tiles, 3, T, T)   every row's tiles in row order (as PLMCollator): the
    pixel_values_videos  (1, 2 * frames, 3, S, S)  second half equals the first (only when the batch has them)

There is no ``labels`` key (TRL passes ``labels=`` itself; a second one would be a duplicate keyword) and no
``chosen_*`` / ``rejected_*`` views (TRL would hand them to the model's forward). PLM's forward scatters image
features into placeholder tokens in order (``PerceptionLMModel.forward``: ``masked_scatter`` over the flattened
``pixel_values``), with no way to point two rows at one image, so each row carries its pixels: they are processed
once per pair and the same tensor is referenced by both rows until the batch's ``torch.cat``. The batch's
second half of tiles is then its first half again, which ``plm_tune.modeling.pair_media`` (installed by
``build_dpo_trainer``) detects to run the vision tower on each pair's tiles and frames once, not once per row.

With ``DPOTrainer`` (trl 1.16, read for the training step, not yet run here): pass ``data_collator=`` this collator
and ``remove_unused_columns=False`` (for a dataset with ``"image"`` / ``"images"``, ``_set_signature_columns_if_needed``
keeps only ``prompt`` / ``chosen`` / ``rejected`` / ``image(s)`` / ``tools`` columns, dropping ``messages`` and
``videos``); a dataset without ``"image"`` / ``"images"`` is not a vision dataset to TRL and goes through its
``_prepare_dataset`` (``extract_prompt``, tokenisation), which this format must skip (e.g. an ``"images": []`` key).
TRL refuses ``precompute_ref_log_probs`` for vision datasets; ``plm_tune.training.reference_cache`` precomputes them
instead, as sample keys ``ref_chosen_logps`` / ``ref_rejected_logps`` that this collator puts in the batch
(``(B,)`` float32, pair order), where TRL's ``_compute_loss`` reads them.

A pair is never cut: dropping trailing turns would drop the answers. With ``max_length``, a pair too long is made
to fit by lowering its media (``fit_tiles`` / ``fit_frames`` of the ``PLMCollator``), both rows with the same
media (those the longer row needs), or rejected (``on_too_long``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from plm_tune.data.preference import is_preference_sample, pair_conversations, validate_preference_sample
from plm_tune.data.sample import Turn, describe_sample, normalize_messages
from plm_tune.encoding.collator import EncodedSample, PLMCollator
from plm_tune.encoding.formatting import IGNORE_INDEX, EncodedConversation
from plm_tune.encoding.length_policy import Outcome
from plm_tune.encoding.sample_plan import SamplePlan, encode_turns, plan_sample, read_media_sizes

__all__ = ["PLMPreferenceCollator", "PairPlan", "plan_pair", "is_preference_sample", "pair_turns",
           "REFERENCE_KEYS"]
# is_preference_sample is plm_tune.data.preference's, re-exported: one definition of a pair.

logger = logging.getLogger(__name__)

# A sample's precomputed reference log-probs (plm_tune.training.reference_cache), carried into the batch as TRL's
# DPOTrainer reads them: (B,) float32 in pair order, in place of its reference forward.
REFERENCE_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


def pair_turns(sample: dict[str, Any]) -> tuple[list[Turn], list[Turn]]:
    """The turns of ``messages + chosen`` and of ``messages + rejected``, checked as the adapters check a pair
    (``plm_tune.data.preference.validate_preference_sample``, media not decoded here: the build decodes them).

    Raises:
        plm_tune.errors.DataError: a prompt not ending with a user turn, an answer that is not one assistant
            message of visible text, identical answers, ... naming the sample, with its ``Reason``.
    """
    validate_preference_sample(sample, decode_media=False)
    chosen, rejected = pair_conversations(sample)
    return normalize_messages(chosen), normalize_messages(rejected)


@dataclass(frozen=True)
class PairPlan:
    """What to build of one preference sample: two sequences with one set of media.

    ``chosen`` and ``rejected`` are ``SamplePlan``s whose media fields (tiling, budgets, tiles, frames, which entries)
    are the same: those planned for the longer sequence. Their labels are set only on the answer and its
    ``<|eot_id|>``. ``full_tokens`` is each sequence's length before the ``max_length`` policy.
    """

    chosen: SamplePlan
    rejected: SamplePlan
    full_tokens: tuple[int, int]

    @property
    def lead(self) -> SamplePlan:
        """The plan of the longer sequence, whose ``max_length`` decision (``fit``) is the pair's."""
        return self.rejected if self.rejected.fit.full_tokens > self.chosen.fit.full_tokens else self.chosen

    @property
    def outcome(self) -> Outcome:
        """``"fits"``, ``"fitted"`` (media lowered for both) or ``"rejected"``; a pair is never truncated."""
        return self.lead.outcome

    @property
    def plans(self) -> tuple[SamplePlan, SamplePlan]:
        return self.chosen, self.rejected


def _answer_only(encoded: EncodedConversation) -> EncodedConversation:
    """``encoded`` with labels kept on its last block only (the answer and its ``<|eot_id|>``)."""
    start = encoded.blocks[-1][0]
    labels = [IGNORE_INDEX] * start + encoded.labels[start:]
    return replace(encoded, labels=labels)


def plan_pair(sample: dict[str, Any], collator: PLMCollator) -> PairPlan:
    """Plan both sequences of a preference sample with ``collator``'s settings, from media headers only.

    The longer sequence is planned under the ``max_length`` policy (turns are never dropped: ``truncate_turns``
    off), and the shorter is encoded with the same media, so it fits whenever the longer does. A pure function of
    its arguments, as ``plan_sample``: the collator and ``plm_tune.encoding.costs`` both call it.
    """
    settings = replace(collator.settings, train_on="assistant", truncate_turns=False)
    turns = pair_turns(sample)
    sizes = read_media_sizes(sample, turns[0], settings)  # the answers have no media: the prompt's are shared
    plans = [plan_sample(sample, t, sizes, settings, collator.encoder) for t in turns]
    full = (plans[0].fit.full_tokens, plans[1].fit.full_tokens)
    lead = 0 if full[0] >= full[1] else 1
    other = 1 - lead
    if plans[lead].outcome == "rejected":
        built = plans
    else:
        media = plans[lead]
        encoded = encode_turns(turns[other], media.image_tiles, media.video_frames, settings, collator.encoder)
        built = [media, media]
        built[other] = replace(media, turns=tuple(turns[other]), encoded=encoded)
        built = [replace(p, encoded=_answer_only(p.encoded)) for p in built]
    return PairPlan(chosen=built[0], rejected=built[1], full_tokens=full)


class PLMPreferenceCollator:
    """Batch preference samples for TRL's ``DPOTrainer`` and ``PerceptionLMForConditionalGeneration``.

    Args:
        collator: the ``PLMCollator`` whose settings (``max_length``, ``max_tiles``, ``num_frames``,
            ``multi_image_tiles``, ``vision_input_type``, ``fit_tiles`` / ``fit_frames``, ``on_too_long``,
            ``pixel_dtype``) format both answers; its ``stats`` count the pairs (``samples``: pairs; ``tokens``:
            both rows). It must label assistant answers (``train_on="assistant"``, the default) and batch
            padded rows (``padding_free``, ``media_in_every_batch`` and ``labelled_logits_only`` off).

    Raises:
        ValueError: a collator with one of the settings above, naming it.

    Example:
        >>> collator = PLMPreferenceCollator(PLMCollator(processor, max_length=4096))   # doctest: +SKIP
        >>> batch = collator([pair_a, pair_b])          # input_ids (4, L): chosen a, chosen b, rejected a, b
        >>> chosen, rejected = sequence_logps(model, batch).chunk(2)                     # doctest: +SKIP
    """

    def __init__(self, collator: PLMCollator) -> None:
        refused = {"train_on": collator.train_on != "assistant", "padding_free": collator.padding_free,
                   "media_in_every_batch": bool(collator.media_in_every_batch),
                   "labelled_logits_only": collator.labelled_logits_only}
        for name, on in refused.items():
            if on:
                raise ValueError(f"PLMPreferenceCollator needs a PLMCollator with {name} at its default "
                                 f"(got {getattr(collator, name)!r}): pairs are scored on each answer and its "
                                 "<|eot_id|>, in padded [chosen, rejected] rows.")
        self.collator = collator

    @property
    def stats(self):
        return self.collator.stats

    def plan(self, sample: dict[str, Any]) -> PairPlan:
        """``plan_pair`` with this collator's settings (media headers only)."""
        return plan_pair(sample, self.collator)

    def build_pair(self, sample: dict[str, Any], plan: PairPlan) -> tuple[EncodedSample, EncodedSample] | None:
        """The chosen and rejected rows of ``plan``, their media decoded and processed once and shared (the same
        tensor objects); None if the pair was rejected as too long (and ``on_too_long="skip"``)."""
        if plan.outcome == "rejected":
            reason = (f"preference sample{describe_sample(sample)} is too long: its longer answer's sequence needs "
                      f"{max(plan.full_tokens)} tokens but max_length is {self.collator.max_length}, and a pair is "
                      "never cut. Raise max_length, lower max_tiles / num_frames (or allow fit_tiles / fit_frames), "
                      "or shorten the text.")
            if self.collator.on_too_long == "raise":
                raise ValueError(reason)
            logger.warning("Skipping %s", reason)
            return None
        chosen = self.collator.build(sample, plan.chosen)
        encoded = plan.rejected.encoded
        return chosen, EncodedSample(encoded.input_ids, encoded.labels, images=chosen.images, videos=chosen.videos)

    def _plan_count_build(self, sample: dict[str, Any]) -> tuple[EncodedSample, EncodedSample, dict[str, Any]] | None:
        plan = self.plan(sample)
        self.collator.count(plan.lead)
        built = self.build_pair(sample, plan)
        return None if built is None else (*built, sample)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = self.collator.build_batch(samples, self._plan_count_build, noun="pair")
        rows = [chosen for chosen, _, _ in pairs] + [rejected for _, rejected, _ in pairs]
        batch = self.collator.pad(rows)
        self.collator.count_batch(batch, rows)
        batch["completion_mask"] = (batch.pop("labels") != IGNORE_INDEX).long()
        for key in REFERENCE_KEYS:  # the kept pairs' values (a pair too long was left out with its value)
            if samples[0].get(key) is not None:
                batch[key] = torch.tensor([float(sample[key]) for _, _, sample in pairs], dtype=torch.float32)
        return batch
