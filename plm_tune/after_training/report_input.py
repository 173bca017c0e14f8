"""The report's input: an ``eval.json`` read back, its shape checked before anything is drawn from it.

``save_eval`` writes ``{"metrics": {name: number}, "records": [{"index", "sample_id", "prompt", "reference",
"answer", "base_answer", "scores", "base_scores"}, ...], "base_metrics": {...} | null, "info": {...}}``. Any
other JSON (a training log, a config, a list, ``{}``) would fail deep in the report with a bare ``KeyError``;
``read_eval_json`` names the file, the first key that is wrong and what wrote the file it expected.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path
from typing import Any

from plm_tune.inference.evaluation import EvalRecord, EvalResult

__all__ = ["read_eval_json"]

_EXPECTED = "an eval.json written by `plm-tune eval` or a recipe (keys: metrics, records, base_metrics, info)"
_FIELDS = {f.name: f for f in dataclasses.fields(EvalRecord)}
_REQUIRED = [name for name, f in _FIELDS.items()
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
# The types a record's values may hold (EvalRecord's annotations are strings, not types, so they are spelt here).
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "index": (int,), "sample_id": (str, type(None)), "prompt": (str,), "reference": (str, type(None)),
    "answer": (str,), "base_answer": (str, type(None)), "scores": (dict,), "base_scores": (dict,),
}

# Where the samples are (``plm-tune eval`` writes ``info.data``): what the report reads to find them again.
_SOURCE_TYPES: dict[str, tuple[type, ...]] = {
    "saved": (str,), "config": (str,), "data_adapter": (str,), "arg": (list,), "eval_split": (int, float),
    "seed": (int,), "limit": (int,),
}


def read_eval_json(path: str | Path) -> EvalResult:
    """The ``EvalResult`` saved in ``path`` (``plm_tune.inference.evaluation.save_eval``), checked.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming ``path``: not JSON, or not an eval.json's shape (the first wrong key, what
            it holds and what was expected).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {_EXPECTED}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not JSON ({type(err).__name__}: {str(err)[:120]}); expected {_EXPECTED}.") from None
    problem = _shape_problem(data)
    if problem is not None:
        raise ValueError(f"{path} is not an eval.json: {problem}. Expected {_EXPECTED}.")
    return EvalResult.from_dict(data)


def _shape_problem(data: Any) -> str | None:
    """What is wrong with ``data`` as a saved ``EvalResult``, first found; None when nothing is."""
    if not isinstance(data, dict):
        return f"the file holds a JSON {_kind(data)}, not an object"
    for key in ("metrics", "records"):
        if key not in data:
            return f"it has no '{key}' (its keys: {sorted(data)[:8]})"
    for key in ("metrics", "base_metrics"):
        problem = _metrics_problem(data.get(key), key, optional=key == "base_metrics")
        if problem:
            return problem
    if not isinstance(data.get("info", {}), dict):
        return f"'info' is a {_kind(data['info'])}, not an object"
    for key in ("data", "training"):
        if not isinstance(data.get("info", {}).get(key) or {}, dict):
            return f"'info.{key}' is a {_kind(data['info'][key])}, not an object"
    source = data.get("info", {}).get("data") or {}
    for key, types in _SOURCE_TYPES.items():
        if source.get(key) is not None and (not isinstance(source[key], types) or isinstance(source[key], bool)):
            return f"'info.data.{key}' is {str(source[key])[:40]!r} ({_kind(source[key])})"
    if source.get("eval_split") is not None and source.get("seed") is None:
        return "'info.data' has an eval_split but no seed, so the same split cannot be drawn again"
    if not isinstance(data["records"], list):
        return f"'records' is a {_kind(data['records'])}, not a list"
    for i, record in enumerate(data["records"]):
        problem = _record_problem(record)
        if problem:
            return f"records[{i}] {problem}"
    return None


def _metrics_problem(metrics: Any, key: str, *, optional: bool) -> str | None:
    if metrics is None and optional:
        return None
    if not isinstance(metrics, dict):
        return f"'{key}' is a {_kind(metrics)}, not an object of metric names to numbers"
    for name, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            return f"'{key}.{name}' is {str(value)[:40]!r}, not a number"
    return None


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"is a {_kind(record)}, not an object"
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        return f"has keys an eval record does not have: {unknown[:5]}"
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        return f"has no {missing}"
    for key, types in _RECORD_TYPES.items():
        if key in record and (not isinstance(record[key], types) or isinstance(record[key], bool)):
            return f"'{key}' is {str(record[key])[:40]!r} ({_kind(record[key])})"
    for key in ("scores", "base_scores"):
        problem = _metrics_problem(record.get(key, {}), key, optional=False)
        if problem:
            return problem
    return None


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", type(None): "null", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__)

