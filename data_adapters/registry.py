"""The data adapters by name, and samples from a ``data:`` section: ``{adapter: NAME, **its arguments}``.

The section means the same wherever it is read: the ``sft`` recipe's ``data:`` key, ``plm-tune plan`` /
``data check`` / ``data inspect`` / ``eval`` (``--data-adapter NAME --arg KEY=VALUE`` on the command line).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ADAPTERS", "adapter_function", "read_data"]

# Adapter names, as "module:function" (imported when used: an adapter may need an extra, e.g. pydicom).
ADAPTERS = {
    "hf": "data_adapters.hf:from_hf_dataset",
    "image_folder": "data_adapters.image_folder:from_image_folder",
    "llava": "data_adapters.llava:from_llava_json",
    "plm_jsonl": "data_adapters.plm_jsonl:from_plm_jsonl",
    "preference": "data_adapters.preference:from_preference_data",
    "video_folder": "data_adapters.video_folder:from_video_folder",
    "dicom": "data_adapters.dicom:from_dicom",
    "webdataset": "data_adapters.webdataset:from_webdataset",
    "synthetic_shapes": "data_adapters.synthetic:synthetic_shapes",
    "synthetic_shape_pairs": "data_adapters.synthetic:synthetic_shape_pairs",
}


def adapter_function(name: str | None) -> Callable[..., Any]:
    """The adapter function called ``name``.

    Raises:
        ValueError: no adapter of that name (listing them).
    """
    if name not in ADAPTERS:
        raise ValueError(f"Unknown or missing data adapter {name!r}: a data: section names one with adapter: NAME "
                         f"(--data-adapter NAME on the command line), one of {', '.join(ADAPTERS)}.")
    module_name, function_name = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def read_data(section: Mapping[str, Any], **defaults: Any) -> Any:
    """Samples from a ``data:`` section: its adapter called with its other keys.

    Args:
        section: ``{"adapter": NAME, **arguments}``.
        defaults: arguments passed when the adapter takes them and the section does not set them (a recipe's
            ``on_error`` / ``streaming``, ``progress=False``).

    Raises:
        ValueError: an unknown adapter, or an argument the adapter does not take (listing the ones it does).
    """
    arguments = dict(section)
    name = arguments.pop("adapter", None)
    build = adapter_function(name)
    parameters = inspect.signature(build).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = [key for key in arguments if key not in parameters]
        if unknown:
            raise ValueError(f"the {name} data adapter has no argument {', '.join(map(repr, unknown))} (from --arg "
                             f"or the config's data: section); its arguments: {', '.join(parameters)}")
    for key, value in defaults.items():
        if key in parameters:
            arguments.setdefault(key, value)
    return build(**arguments)
