"""held_out_split: a stratified split holds out a share of every answer, so each class is trained and tested."""

from __future__ import annotations

from collections import Counter

import datasets
import pytest

from data_adapters import held_out_split
from plm_tune.sample import to_table


def _samples(counts: dict[str, int]) -> datasets.Dataset:
    rows = [{"messages": [{"role": "user", "content": "Modality?"}, {"role": "assistant", "content": answer}]}
            for answer, n in counts.items() for _ in range(n)]
    return to_table(rows)


def _answers(dataset) -> Counter:
    return Counter(row["messages"][-1]["content"][0]["text"] if isinstance(row["messages"][-1]["content"], list)
                   else row["messages"][-1]["content"] for row in dataset)


def test_every_class_with_two_samples_is_in_both_sides():
    counts = {"OT": 46, "US": 21, "MR": 19, "CT": 9, "CR": 8, "NM": 4, "SEG": 2, "PT": 1}
    train, held = held_out_split(_samples(counts), 0.25, seed=0, stratify=True)
    assert _answers(held) == {"OT": 12, "US": 5, "MR": 5, "CT": 2, "CR": 2, "NM": 1, "SEG": 1}
    assert _answers(train) == {name: n - _answers(held)[name] for name, n in counts.items()}
    again = held_out_split(_samples(counts), 0.25, seed=0, stratify=True)[1]
    assert again["messages"] == held["messages"]  # the same seed, the same split


def test_a_plain_split_is_the_datasets_one_and_a_bad_share_is_refused():
    dataset = _samples({"a": 10, "b": 10})
    train, held = held_out_split(dataset, 0.2, seed=3)
    expected = dataset.train_test_split(test_size=0.2, seed=3)["test"]
    assert held["messages"] == expected["messages"] and len(train) == 16
    with pytest.raises(ValueError, match="between 0 and 1"):
        held_out_split(dataset, 1.0)


def test_a_zero_share_holds_out_nothing():
    dataset = _samples({"a": 3, "b": 2})
    train, held = held_out_split(dataset, 0.0, stratify=True)
    assert held is None and len(train) == len(dataset)
