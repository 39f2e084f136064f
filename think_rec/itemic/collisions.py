"""Make every SID unique: an extra disambiguation level, or balanced reassignment of the last level."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .rq_kmeans import Quantized

STRATEGIES = ("extra-level", "balanced")


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code tuple is shared with at least one other item."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())


def _closeness(q: Quantized) -> np.ndarray:
    """Distance of each item's last residual to its last-level code (smaller = keeps its code)."""
    return ((q.last_residual - q.last_codebook[q.codes[:, -1]]) ** 2).sum(1)


def _extra_level(codes: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Append a level numbering the items of each shared tuple 0, 1, ... (closest item first)."""
    order = np.lexsort((order_key, *codes.T[::-1]))
    sorted_codes = codes[order]
    new_group = np.ones(len(codes), dtype=bool)
    new_group[1:] = (sorted_codes[1:] != sorted_codes[:-1]).any(1)
    starts = np.maximum.accumulate(np.where(new_group, np.arange(len(codes)), 0))
    extra = np.empty(len(codes), dtype=np.int64)
    extra[order] = np.arange(len(codes)) - starts
    return np.concatenate([codes, extra[:, None]], 1)


def _balanced(q: Quantized, closeness: np.ndarray) -> np.ndarray:
    """Move colliding items to the nearest unused last-level code under the same prefix."""
    codes = q.codes.copy()
    size = q.codebook_sizes[-1]
    book = q.last_codebook[:size]
    used: dict[tuple, set[int]] = defaultdict(set)
    owner: dict[tuple, int] = {}
    movers = []
    for i in np.argsort(closeness, kind="stable"):
        key = tuple(codes[i])
        if key in owner:
            movers.append(i)
        else:
            owner[key] = i
            used[key[:-1]].add(int(key[-1]))
    for i in movers:
        prefix = tuple(codes[i, :-1])
        taken = used[prefix]
        if len(taken) >= len(book):
            continue  # prefix full: left for the extra level
        dist = ((book - q.last_residual[i]) ** 2).sum(1)
        code = next(int(c) for c in np.argsort(dist, kind="stable") if int(c) not in taken)
        codes[i, -1] = code
        taken.add(code)
    return codes


def resolve(q: Quantized, strategy: str = "extra-level") -> tuple[np.ndarray, list[int], dict]:
    """Unique codes for every item: ``(codes, codebook_sizes, stats)``.

    ``extra-level`` appends a level of size = most items sharing one tuple (skipped when nothing
    collides); ``balanced`` first reassigns colliders to free last-level codes and appends the extra
    level only when some prefix is full."""
    if strategy not in STRATEGIES:
        raise ValueError(f"collision strategy must be one of {STRATEGIES}, got {strategy!r}")
    closeness = _closeness(q)
    before = collision_rate(q.codes)
    codes, sizes = q.codes, list(q.codebook_sizes)
    if strategy == "balanced" and before > 0:
        codes = _balanced(q, closeness)
    stats = {"collision_strategy": strategy, "collision_rate_before": round(before, 6)}
    remaining = collision_rate(codes)
    if strategy == "balanced":
        stats["collision_rate_after_reassign"] = round(remaining, 6)
    if remaining > 0:
        codes = _extra_level(codes, closeness)
        sizes.append(int(codes[:, -1].max()) + 1)
    stats["collision_extra_level_size"] = sizes[-1] if len(sizes) > len(q.codebook_sizes) else 0
    stats["collision_rate_after"] = collision_rate(codes)
    return codes, sizes, stats
