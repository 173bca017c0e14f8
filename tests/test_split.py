"""held_out_split: a stratified split holds out a share of every answer, so each class is trained and tested; a
stream's first records are held out, and its readers (processes, DataLoader workers) train on exactly the rest."""

from __future__ import annotations

from collections import Counter

import datasets
import pytest
from torch.utils.data import DataLoader

from data_adapters import held_out_split
from plm_tune.data.sample import to_table


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
    train, held = held_out_split(dataset, 4, seed=3)  # a whole number: that many samples
    assert (len(train), len(held)) == (16, 4)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"a share in \[0, 1\) or a whole number"):
            held_out_split(dataset, bad)


def test_a_zero_share_holds_out_nothing():
    dataset = _samples({"a": 3, "b": 2})
    train, held = held_out_split(dataset, 0.0, stratify=True)
    assert held is None and len(train) == len(dataset)


SHARDS, PER_SHARD = 8, 4


def _records(shards):
    for shard in shards:
        for i in range(PER_SHARD):
            yield {"id": f"s{shard}-{i}", "messages": [{"role": "user", "content": "Which?"},
                                                       {"role": "assistant", "content": str(shard)}]}


def _stream() -> datasets.IterableDataset:
    return datasets.IterableDataset.from_generator(_records, gen_kwargs={"shards": list(range(SHARDS))})


def test_a_stream_holds_out_its_first_records_and_every_reader_trains_on_exactly_the_rest():
    stream = _stream()
    train, held = held_out_split(stream, 6)
    assert isinstance(held, datasets.Dataset) and held["id"] == [s["id"] for s in stream.take(6)]
    assert train.num_shards == SHARDS  # still shared out by shard
    everything = {f"s{shard}-{i}" for shard in range(SHARDS) for i in range(PER_SHARD)}
    # What accelerate gives each of 2 processes (a block of shards), each read by 2 DataLoader workers.
    read = [s["id"] for rank in (0, 1)
            for s in DataLoader(train.shard(num_shards=2, index=rank), batch_size=None, num_workers=2)]
    assert Counter(read) == Counter(everything - set(held["id"]))  # each once; no held-out record
    # Shuffled as the recipes shuffle a stream, two epochs of two processes: still exactly the rest, each epoch.
    shuffled = train.shuffle(seed=0, buffer_size=3)
    for epoch in (0, 1):
        shuffled.set_epoch(epoch)
        read = [s["id"] for rank in (0, 1)
                for s in DataLoader(shuffled.shard(num_shards=2, index=rank), batch_size=None, num_workers=2)]
        assert Counter(read) == Counter(everything - set(held["id"])), epoch


def test_a_stream_refuses_a_share_stratifying_and_holding_out_everything():
    with pytest.raises(ValueError, match=r"no length to hold out a share of \(got 0.1\).*e\.g\. 64"):
        held_out_split(_stream(), 0.1)
    with pytest.raises(ValueError, match=r"stratify=True needs every answer"):
        held_out_split(_stream(), 4, stratify=True)
    with pytest.raises(ValueError, match=r"has 32 sample\(s\); holding out 32 leaves none"):
        held_out_split(_stream(), SHARDS * PER_SHARD)
    train, held = held_out_split(_stream(), SHARDS * PER_SHARD - 1)  # one left: the last shard's last record
    assert [s["id"] for s in train] == [f"s{SHARDS - 1}-{PER_SHARD - 1}"] and len(held) == 31
    stream = _stream()
    assert held_out_split(stream, 0) == (stream, None)
