"""Layer 5, training: TRL's ``SFTTrainer`` wired for PLM.

``trainer`` (``build_trainer``, ``run_config``), ``plm_trainer`` (``PLMTrainer``, the ``SFTTrainer`` subclass;
imports TRL), ``callbacks`` (metrics and generation checks in the logs), ``checkpoints`` (resuming, writable
output), ``distributed`` (several processes: streams, placeholder media, shared costs), ``quiet_log`` (the
console log) and ``plan`` (the planning report before a run). Imports: the layers below.
"""
