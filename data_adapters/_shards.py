"""Which WebDataset shards to read: brace patterns, globs and URLs expanded, and the shards of one rank.

Brace patterns are expanded by the ``braceexpand`` package, which WebDataset's own expansion calls
(``webdataset.shardlists.expand_urls``), so a pattern written for WebDataset names the same shards here:

    ``{000..003}``  000 001 002 003     a number with a leading zero pads every number to the widest bound
    ``{3..1}``      3 2 1               ranges count down as well as up
    ``{00..10..5}`` 00 05 10            an optional step (its sign is ignored)
    ``{-1..1}``     -1 0 1              negative bounds
    ``{a..c}``      a b c               letter ranges (A-Z then a-z)
    ``{x,y}``       x y                 lists, which may nest braces and hold empty items: ``a{,.bak}``
    ``{x}``         {x}                 neither a range nor a list: kept as written
    ``\\{``          {                   a backslash takes the next character literally

Several braces multiply, leftmost slowest. Unbalanced braces are an error. WebDataset's other string syntax
(``::`` between URL lists, ``${VAR}`` from ``WDS_VAR`` environment variables) is not read.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from braceexpand import UnbalancedBracesError, braceexpand

__all__ = ["current_rank", "expand_braces", "expand_shards", "select_shards"]

def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, as WebDataset expands it (see the module docstring).

    >>> expand_braces("shard-{08..12..2}.tar")
    ['shard-08.tar', 'shard-10.tar', 'shard-12.tar']

    Raises:
        ValueError: unbalanced braces.
    """
    try:
        return list(braceexpand(pattern))
    except UnbalancedBracesError as err:
        raise ValueError(f"Shard pattern '{pattern}' has unbalanced braces. Close each '{{' with a '}}', or write "
                         "a literal brace as '\\{'.") from err


def expand_shards(urls_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Every shard named by paths, globs, brace patterns or URLs, in the order given (globs sorted).

    >>> expand_shards("data/shard-{000..003}.tar")   # doctest: +SKIP
    ['data/shard-000.tar', 'data/shard-001.tar', 'data/shard-002.tar', 'data/shard-003.tar']

    URLs (``scheme://...``) are opened with ``fsspec`` when read and are not checked here.

    Raises:
        ValueError: a local shard that does not exist, a glob that matches nothing, a shard named twice
            (it would be read twice), unbalanced braces.
    """
    specs = [urls_or_paths] if isinstance(urls_or_paths, str | os.PathLike) else list(urls_or_paths)
    shards: list[str] = []
    for spec in specs:
        for name in expand_braces(os.fspath(spec)):
            if "://" in name:
                shards.append(name)
            elif any(c in name for c in "*?["):
                matches = sorted(glob.glob(name))
                if not matches:
                    raise ValueError(f"No shard matches '{name}'. Check the folder and the pattern.")
                shards.extend(matches)
            elif os.path.isfile(name):
                shards.append(name)
            else:
                raise ValueError(f"Shard '{name}' does not exist. Fix the path or the brace range in "
                                 f"'{os.fspath(spec)}'.")
    if not shards:
        raise ValueError("No shards given: pass a path, a glob such as 'data/*.tar' or 'data/shard-{000..009}.tar'.")
    repeated = sorted({s for s in shards if shards.count(s) > 1})
    if repeated:
        raise ValueError(f"Shard(s) named more than once: {', '.join(repeated)}. Their records would be read "
                         "twice; list each shard once.")
    return shards


def select_shards(shards: Sequence[str], *, rank: int, world_size: int) -> list[str]:
    """The whole shards one distributed rank reads: every ``world_size``-th, starting at ``rank``.

    Each rank's shards are then spread over its DataLoader workers by ``datasets`` (worker ``w`` of ``W``
    reads that list's ``w``, ``w + W``, ... shard), so every record is read by exactly one worker of one rank.

    Raises:
        ValueError: a rank outside ``[0, world_size)``, or fewer shards than ranks: some rank would get none.
            ``from_webdataset(split_by_rank=True)`` splits such a stream by record instead.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, "
                         f"world_size={world_size}.")
    if len(shards) < world_size:
        raise ValueError(f"{len(shards)} shard(s) for {world_size} ranks: some ranks would get no shard. Write at "
                         "least one shard per rank, or read with from_webdataset(split_by_rank=True), which then "
                         "has every rank read all of them and keep its own records.")
    return list(shards[rank::world_size])


def current_rank() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    import torch.distributed as dist  # noqa: PLC0415 - only split_by_rank needs torch here

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
