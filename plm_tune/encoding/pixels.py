"""Media entries -> pixel tensors and their exact placeholder-token counts, through PLM's processors."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from plm_tune.arguments import MediaArguments
from plm_tune.data.media import load_image, load_video
from plm_tune.encoding.sample_plan import VisionInputType

__all__ = ["PixelEncoder", "VisionInputType"]


class PixelEncoder:
    """Runs PLM's image / video processors on one media item at a time.

    Args:
        processor: a ``PerceptionLMProcessor``.
        vision_input_type: ``"thumb+tile"`` (a thumbnail plus up to ``max_tiles`` tiles) or ``"vanilla"``
            (one tile). Defaults to the processor's setting.
        max_tiles: default tile budget per image (the processor's ``max_num_tiles`` if None); a sample's
            ``"max_tiles"`` key overrides it.
        num_frames: default frames per video (PLM uses 32); a sample's ``"num_frames"`` overrides it.
        multi_image_tiles: how a sample of several images tiles them (``PlanSettings.image_budget``): 1 (default) one
            plain tile each, as PLM's trainer processes them (perception_models ``core/data/preprocessor.py``
            sends a multi-image row through the video transform: one resized frame per image); N > 1: a
            thumbnail plus up to N tiles each; None: as a single image (``max_tiles`` / the sample's).
    """

    def __init__(
        self,
        processor: Any,
        *,
        vision_input_type: VisionInputType | None = MediaArguments.vision_input_type,
        max_tiles: int | None = MediaArguments.max_tiles,
        num_frames: int = MediaArguments.num_frames,
        multi_image_tiles: int | None = MediaArguments.multi_image_tiles,
    ) -> None:
        if multi_image_tiles is not None and (isinstance(multi_image_tiles, bool) or multi_image_tiles < 1):
            raise ValueError(f"multi_image_tiles must be a positive number of tiles or None, got {multi_image_tiles!r}.")
        self.multi_image_tiles = multi_image_tiles
        self.image_processor = processor.image_processor
        self.video_processor = processor.video_processor
        self.vision_input_type = vision_input_type or self.image_processor.vision_input_type
        if self.vision_input_type not in ("thumb+tile", "vanilla"):
            raise ValueError(f"vision_input_type must be 'thumb+tile' or 'vanilla', got {self.vision_input_type!r}.")
        self.max_tiles = self.image_processor.max_num_tiles if max_tiles is None else _positive(max_tiles, "max_tiles")
        self.num_frames = _positive(num_frames, "num_frames")
        self.patch_size = processor.patch_size
        self.pooling_ratio = processor.pooling_ratio
        self.tile_size = self.image_processor.tile_size  # pixels per tile side
        self.tile_tokens = self.tokens_per_tile(self.tile_size, self.tile_size)  # placeholder tokens per image tile
        size = self.video_processor.size  # every frame is resized to this size
        height, width = (size["height"], size["width"]) if isinstance(size, Mapping) else (size.height, size.width)
        self.frame_tokens = self.tokens_per_tile(height, width)  # placeholder tokens per video frame
        self._placeholders: dict[str, tuple[torch.Tensor, int]] = {}  # placeholder(): the same input every batch
        self._by_tiles: dict[int, Any] = {}

    def tokens_per_tile(self, height: int, width: int) -> int:
        """Placeholder tokens for one tile or frame of ``height`` x ``width`` pixels (256 for PLM's 448 px)."""
        return (height // self.patch_size // self.pooling_ratio) * (width // self.patch_size // self.pooling_ratio)

    def _image_processor_for(self, max_tiles: int) -> Any:
        # PLM's image processor reads the tile budget from its attribute when choosing the tile grid and
        # ignores a per-call max_num_tiles, so each budget gets its own shallow copy.
        if max_tiles not in self._by_tiles:
            clone = copy.copy(self.image_processor)
            clone.max_num_tiles = max_tiles
            self._by_tiles[max_tiles] = clone
        return self._by_tiles[max_tiles]

    def image(self, entry: Any, max_tiles: int | None = None,
              vision_input_type: VisionInputType | None = None) -> tuple[torch.Tensor, int]:
        """Returns ``(tiles, n_tokens)``: tiles ``(n_tiles, 3, T, T)`` float32 and the placeholder count."""
        budget = self.max_tiles if max_tiles is None else _positive(max_tiles, "max_tiles")
        pil = load_image(entry)
        out = self._image_processor_for(budget)(
            images=[pil], vision_input_type=vision_input_type or self.vision_input_type, return_tensors="pt"
        )
        tiles = out["pixel_values"][0]  # (n_tiles, 3, T, T)
        return tiles, tiles.shape[0] * self.tokens_per_tile(*tiles.shape[-2:])

    def video(self, entry: Any, num_frames: int | None = None) -> tuple[torch.Tensor, int]:
        """Returns ``(frames, n_tokens)``: frames ``(T, 3, S, S)`` float32 and the placeholder count."""
        count = self.num_frames if num_frames is None else _positive(num_frames, "num_frames")
        frames = load_video(entry, num_frames=count)  # (T, H, W, 3) uint8
        out = self.video_processor(videos=[frames], return_tensors="pt")
        pixels = out["pixel_values_videos"][0]  # (T, 3, S, S)
        return pixels, pixels.shape[0] * self.tokens_per_tile(*pixels.shape[-2:])


    def placeholder(self, kind: str) -> tuple[torch.Tensor, int]:
        """``(pixels, n_tokens)`` of the smallest input of ``kind`` (``"image"``: one plain tile of a black image;
        ``"video"``: one black frame): what ``PLMCollator(media_in_every_batch=...)`` adds to a batch without one."""
        if kind not in self._placeholders:  # processed once, then reused by every batch that needs it
            self._placeholders[kind] = (self.image(Image.new("RGB", (64, 64)), 1, "vanilla") if kind == "image"
                                        else self.video(np.zeros((1, 64, 64, 3), dtype=np.uint8), 1))
        return self._placeholders[kind]


def _positive(value: Any, name: str) -> int:
    """``value`` if it is an int >= 1; 0 or a negative budget is an error, never "use the default"."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"'{name}' must be a positive integer, got {value!r}. Leave it unset (None) for the "
                         "collator's default.")
    return value
