"""Layer 2, encoding: a sample planned, then built into model inputs (token ids, labels, pixels), and batched.

``sample_plan`` (what to build of a sample, from media sizes: ``plan_sample``), ``formatting`` (PLM's chat
format with exact labels), ``tiling`` (PLM's tile grid as arithmetic), ``length_policy`` (what a too-long sample
keeps), ``pixels`` (PLM's image / video processors), ``collator`` (``PLMCollator``: plan, build, batch),
``costs`` (the plan as counts, from headers), ``sampler`` (length-grouped batches), ``sparse_logits`` (the loss
from labelled positions only) and ``preflight`` (data checks through the collator). Imports: ``plm_tune.data``
and the foundation; no model, no trainer.
"""
