"""PLM-1B at its real widths (2048-wide decoder, 128,256 vocabulary, 1024-wide PE tower, 448 px tiles), two
decoder layers and two vision blocks, random init: a LoRA step, generation and merge in a fresh process, and
``estimate_memory`` against the step's measured peak RSS (``benchmarks/real_size_cpu.py`` at full depth)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from conftest import ROOT

pytest.importorskip("llama_models", reason='needs the real-tokenizer extra: pip install "plm-tune[real-tokenizer]"')
sys.path.insert(0, str(ROOT / "benchmarks"))
import real_size_cpu  # noqa: E402


@pytest.mark.slow
def test_lora_step_generate_merge_and_memory_estimate_at_real_width(tmp_path):
    from plm_tune.modeling.testing_real import build_random_plm

    path = build_random_plm(tmp_path / "plm-1b", "1B", text_layers=2, vision_layers=2, dtype=torch.bfloat16)
    result = real_size_cpu.measure(path, "lora", max_tiles=1, timeout=None)
    # max_tiles=1: one 448 px tile and the thumbnail, 256 image tokens each.
    assert result["tiles"] == 2 and 512 < result["seq_len"] < 600
    # Random weights spread over 128,256 ids: the loss is near ln(128256) = 11.76.
    assert math.isfinite(result["loss"]) and abs(result["loss"] - math.log(128256)) < 1.0
    # Generation saw the image and the question without the answer, and stopped within max_new_tokens=4.
    assert 256 < result["prompt_tokens"] < result["seq_len"] and result["new_tokens"] <= 4
    assert result["merge_max_logit_diff"] < 1e-3  # the merged model computes what the adapter did
    ratio = result["estimated"] / result["measured"]
    assert 0.85 < ratio < 1.15, (result["estimated"], result["measured"])
