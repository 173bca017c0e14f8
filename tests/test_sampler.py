"""LengthGroupedBatchSampler: each index once per epoch, seeded shuffles, less padding, ranks, DataLoader use."""

from __future__ import annotations

import pytest
import torch
from conftest import make_frames, make_image, qa
from torch.utils.data import DataLoader

from data_adapters.synthetic import synthetic_shapes
from plm_tune import PLMCollator
from plm_tune.encoding.costs import dataset_costs, sample_cost
from plm_tune.encoding.sampler import LengthGroupedBatchSampler, padding_fraction
from plm_tune.training.distributed import process_share


def _samples():
    """40 samples from ~20 to thousands of tokens: small shapes, big tiled images, long answers, videos."""
    shapes = synthetic_shapes(16, seed=0, image_size=56)
    samples = [shapes[i] for i in range(len(shapes))]
    for i in range(8):  # 4 to 9 tiles of 56 px
        samples.append({"messages": qa("Describe.", "Noise.", ["image"]),
                        "images": [make_image(168, 168, seed=i)], "max_tiles": 4 + i % 6})
    for i in range(8):  # long text, no media
        samples.append({"messages": qa("Tell a story.", "once upon a time " * (40 + 30 * i))})
    for i in range(8):  # 2 to 16 frames
        samples.append({"messages": qa("What happens?", "Noise.", ["video"]),
                        "videos": [make_frames(2 + 2 * i, seed=i)]})
    return samples


@pytest.fixture(scope="module")
def data(processor):
    collator = PLMCollator(processor)
    samples = _samples()
    return samples, [sample_cost(s, collator) for s in samples], collator


def _flat(batches):
    return [i for b in batches for i in b]


def test_sample_cost_counts_tokens_and_vision_units(data):
    samples, costs, collator = data
    tokens, vision = costs[16]  # 168 px image, max_tiles=4: 4 tiles + a thumbnail
    assert tokens == len(collator.encode(samples[16]).input_ids) and vision == 5
    assert costs[-1][1] == 16 and costs[24][1] == 0  # 16 frames; text only
    assert max(c[0] for c in costs) > 5 * min(c[0] for c in costs)


def test_every_index_once_per_epoch_and_seeded_shuffle(data):
    _, costs, _ = data
    sampler = LengthGroupedBatchSampler(costs, 4, seed=3, mega_batch_mult=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(_flat(batches)) == list(range(len(costs)))
        assert len(batches) == len(sampler) == 10
        orders.append(_flat(batches))
    assert orders[0] != orders[1] != orders[2]
    again = LengthGroupedBatchSampler(costs, 4, seed=3, mega_batch_mult=3)
    again.set_epoch(1)
    assert _flat(again) == orders[1]
    # The most expensive sample comes in the first batch.
    assert max(range(len(costs)), key=costs.__getitem__) in list(sampler)[0]


def test_last_batch_shorter_or_dropped(data):
    _, costs, _ = data
    keep = LengthGroupedBatchSampler(costs, 6)
    assert len(keep) == 7 and sorted(_flat(keep)) == list(range(40))
    drop = LengthGroupedBatchSampler(costs, 6, drop_last=True)
    assert len(drop) == len(list(drop)) == 6 and all(len(b) == 6 for b in drop)
    assert len(set(_flat(drop))) == 36


def test_grouping_pads_much_less_than_random_batches(data):
    _, costs, _ = data
    grouped = padding_fraction(costs, list(LengthGroupedBatchSampler(costs, 4)))
    order = torch.randperm(len(costs), generator=torch.Generator().manual_seed(0)).tolist()
    random = padding_fraction(costs, [order[i:i + 4] for i in range(0, len(order), 4)])
    print(f"padding fraction: grouped {grouped:.3f}, random {random:.3f}")
    assert grouped < 0.5 * random
    assert padding_fraction(costs, [[0]]) == 0.0


@pytest.mark.parametrize("batch_size, replicas", [(4, 2), (3, 4)])
def test_ranks_are_disjoint_and_cover_the_epoch(data, batch_size, replicas):
    _, costs, _ = data
    ranks = [LengthGroupedBatchSampler(costs, batch_size, mega_batch_mult=2, num_replicas=replicas, rank=r)
             for r in range(replicas)]
    per_rank = [list(s) for s in ranks]
    assert all(len(b) == len(s) for b, s in zip(per_rank, ranks, strict=True))
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
    flat = [_flat(b) for b in per_rank]
    assert set().union(*flat) == set(range(40))
    if 40 % (batch_size * replicas) == 0:
        assert sorted(sum(flat, [])) == list(range(40))  # disjoint
    else:  # 3 * 4 = 12: 8 indices repeated to fill the last step
        assert len(sum(flat, [])) == 48
    # The n-th batches of all ranks are neighbours in one sorted mega-batch: rank r's cheapest sample
    # costs at least as much as rank r + 1's most expensive one, so ranks get similar work.
    for step in zip(*per_rank, strict=True):
        for a, b in zip(step, step[1:], strict=False):
            assert min(costs[i] for i in a) >= max(costs[i] for i in b)
    assert max(range(40), key=costs.__getitem__) in per_rank[0][0]


def test_as_batch_sampler_of_a_dataloader_with_workers(data):
    samples, costs, collator = data
    sampler = LengthGroupedBatchSampler(costs, 5, seed=1)
    loader = DataLoader(samples, batch_sampler=sampler, collate_fn=collator, num_workers=2)
    widths = [batch["input_ids"].shape[1] for batch in loader]
    assert len(widths) == len(sampler) == 8
    assert widths == [max(costs[i][0] for i in b) for b in sampler]


@pytest.mark.parametrize("replicas, drop_last", [(1, False), (2, False), (3, True)])
def test_flat_order_cut_into_batches_and_dealt_to_ranks_gives_each_rank_its_batches(data, replicas, drop_last):
    """What the Trainer does with a sampler: a DataLoader cuts the flat order into per-device batches and
    accelerate deals them to the processes in turn. Each process must get exactly its rank's batches."""
    _, costs, _ = data
    ranks = [LengthGroupedBatchSampler(costs, 3, seed=2, mega_batch_mult=2, num_replicas=replicas, rank=r,
                                       drop_last=drop_last) for r in range(replicas)]
    order = ranks[0].flat()
    for epoch in (0, 1):
        order.set_epoch(epoch)
        for sampler in ranks:
            sampler.set_epoch(epoch)
        flat = list(order)
        assert len(flat) == len(order)
        batches = [flat[i : i + 3] for i in range(0, len(flat), 3)]
        for r, sampler in enumerate(ranks):
            assert batches[r::replicas] == list(sampler), (epoch, r)
    # With one replica the short remainder batch comes last, so equal cuts never straddle two batches.
    single = LengthGroupedBatchSampler(costs, 6, seed=4)
    assert [len(b) for b in single] == [6] * 6 + [4]


@pytest.mark.parametrize("count, processes", [(40, 2), (40, 3), (7, 4), (2, 3)])
def test_processes_share_the_costs_and_gathered_they_are_everyones(data, count, processes):
    """What shared_costs does under several processes: each estimates its block, all gather them in process
    order (accelerate's gather_object). The tests/test_deepspeed.py runs check it over two real processes."""
    samples, costs, collator = data
    shares = [process_share(count, rank, processes) for rank in range(processes)]
    assert [i for share in shares for i in share] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    gathered = [cost for share in shares for cost in dataset_costs(samples, collator, progress=False, indices=share)]
    assert gathered == costs[:count]


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="rank must be in"):
        LengthGroupedBatchSampler([(1, 0)], 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="costs is empty"):
        LengthGroupedBatchSampler([], 1)
