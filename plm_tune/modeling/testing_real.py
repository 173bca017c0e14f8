"""PLM-1B / 3B / 8B at random init with the real tokenizer: everything about the release except its weights.

The weights of ``facebook/Perception-LM-*`` cannot be downloaded here, but the rest can be rebuilt offline:
the released architecture (``plm_tune.modeling.memory.plm_config``), Llama 3's BPE file as shipped by Meta's
``llama-models`` package (``pip install "plm-tune[real-tokenizer]"``) converted with transformers'
``TikTokenConverter``, PLM's 256 special tokens at the released ids (128000-128255), PLM's chat template and
the released processor settings (448 px tiles, 256 tokens per tile, up to 36 tiles, [-1, 1] pixels).

    >>> path = build_random_plm("/tmp/plm-1b", "1B", text_layers=1, vision_layers=1)  # doctest: +SKIP
    >>> AutoProcessor.from_pretrained(path).tokenizer("Hello world").input_ids          # doctest: +SKIP
    [128000, 9906, 1917]

Use it to test what only shows at real scale: tokenizer merges across separately encoded text, 128k-vocabulary
logits, real tile shapes, memory. Random weights generate nonsense; nothing here measures quality.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from plm_tune.modeling.testing import PLM_SPECIAL_TOKENS, plm_tokenizer, save_plm_processor, save_random_model

__all__ = ["build_random_plm", "llama3_tokenizer_file", "real_plm_tokenizer"]

# The released PLM tokenizer: 128,000 BPE tokens, then PLM's 256 special tokens.
REAL_VOCAB = 128256
_INSTALL_HINT = 'pip install "plm-tune[real-tokenizer]"'


def llama3_tokenizer_file() -> Path:
    """Path of Llama 3's tiktoken BPE file inside the installed ``llama-models`` package.

    Raises:
        ImportError: ``llama-models`` is not installed (the hint names the extra to install).
    """
    # find_spec locates the package without importing it (its __init__ pulls in pydantic models we do not need).
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The real PLM tokenizer needs Llama 3's BPE file from llama-models: {_INSTALL_HINT}.")
    path = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise ImportError(f"llama-models is installed but has no {path}; install the pinned one: {_INSTALL_HINT}.")
    return path


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "plm-tune"


def real_plm_tokenizer(cache_dir: str | Path | None = None) -> Any:
    """PLM's released tokenizer rebuilt offline: Llama 3's BPE + PLM's special tokens, roles and template ids.

    Converting the BPE file takes about 20 s on 2 CPU cores, so the converted ``tokenizer.json`` is cached in
    ``cache_dir`` (default ``$XDG_CACHE_HOME/plm-tune`` or ``~/.cache/plm-tune``) under the BPE file's hash;
    later calls load it in about 2 s.

    Args:
        cache_dir: where the converted tokenizer is kept.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``len(tokenizer) == 128256``.

    Raises:
        ImportError: ``llama-models`` / ``tiktoken`` are not installed.
    """
    from tokenizers import Tokenizer

    bpe = llama3_tokenizer_file()
    digest = hashlib.sha256(bpe.read_bytes() + "\n".join(PLM_SPECIAL_TOKENS).encode()).hexdigest()[:16]
    cached = Path(cache_dir or _default_cache()) / f"plm-tokenizer-{digest}.json"
    if cached.is_file():
        return plm_tokenizer(Tokenizer.from_file(str(cached)))
    try:
        from transformers.convert_slow_tokenizer import TikTokenConverter

        # TikTokenConverter's default split pattern is Llama 3's; special tokens go after the 128,000 BPE ids.
        raw = TikTokenConverter(vocab_file=str(bpe), extra_special_tokens=PLM_SPECIAL_TOKENS).converted()
    except ValueError as err:  # transformers raises ValueError when tiktoken is missing
        raise ImportError(f"Converting Llama 3's BPE file needs tiktoken: {_INSTALL_HINT}.") from err
    if raw.get_vocab_size() != REAL_VOCAB:
        raise RuntimeError(f"Expected {REAL_VOCAB} tokens from {bpe} + PLM's specials, got {raw.get_vocab_size()}.")
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temporary name and renamed, so concurrent test processes never read a half-written file.
    with tempfile.NamedTemporaryFile("w", dir=cached.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(raw.to_str())
    os.replace(tmp.name, cached)
    return plm_tokenizer(raw)


def build_random_plm(
    path: str | Path,
    size: Literal["1B", "3B", "8B"] = "1B",
    *,
    seed: int = 0,
    text_layers: int | None = None,
    vision_layers: int | None = None,
    dtype: Any = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Write PLM-``size`` at random init, with the real tokenizer, template and processor, to ``path``.

    Args:
        path: output folder (created); loads with ``AutoModelForImageTextToText`` / ``AutoProcessor``.
        size: ``"1B"``, ``"3B"`` or ``"8B"``: the released widths, heads, vocabulary and PE tower.
        seed: seed of the random weights.
        text_layers, vision_layers: fewer decoder layers / vision blocks than released (default: released
            depth: 16 / 28 / 32 decoder layers, 23 / 23 / 47 vision blocks). Only the kept layers are ever
            created, so a 1-layer 1B builds in seconds.
        dtype: the saved weights' dtype (default float32; ``torch.bfloat16`` is the released checkpoints' and
            halves the file).
        cache_dir: the converted tokenizer's cache (``real_plm_tokenizer``).

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: an unknown size or a layer count below 1 or above the released depth.
        ImportError: the ``real-tokenizer`` extra is not installed.
    """
    from plm_tune.modeling.memory import plm_config

    config = plm_config(size)  # raises on an unknown size
    released = {"text_layers": config.text_config.num_hidden_layers,
                "vision_layers": config.vision_config.model_args["depth"]}
    for name, value in (("text_layers", text_layers), ("vision_layers", vision_layers)):
        if value is not None and not 1 <= value <= released[name]:
            raise ValueError(f"{name} must be between 1 and PLM-{size}'s {released[name]}, got {value}.")
    if text_layers is not None:
        config.text_config.num_hidden_layers = text_layers
    if vision_layers is not None:
        config.vision_config.model_args = {**config.vision_config.model_args, "depth": vision_layers}
    tokenizer = real_plm_tokenizer(cache_dir)
    # The released ids, which plm_config hard-codes, must be the tokenizer's.
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|image|>", "<|video|>")]
    if ids != [config.text_config.bos_token_id, config.image_token_id, config.video_token_id]:
        raise RuntimeError(f"PLM's special-token ids {ids} disagree with plm_config({size!r}).")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_random_model(config, tokenizer, out, seed, dtype=dtype)
    save_plm_processor(out, tokenizer, config.vision_config.model_args["img_size"][0])
    return out
