"""Filters that return a new ``RecDataset``: iterative k-core and consecutive-duplicate removal."""
from __future__ import annotations

from collections import Counter

import datasets

from .schema import INTERACTION_FEATURES, Catalog, Interactions, RecDataset


def _with_sequences(ds: RecDataset, users: list[str], seqs: list[list[str]], stamps: list[list[int]],
                    drop_unused_items: bool, **extra) -> RecDataset:
    table = datasets.Dataset.from_dict({"user_id": users, "item_ids": seqs, "timestamps": stamps},
                                       features=INTERACTION_FEATURES)
    catalog = ds.catalog
    if drop_unused_items:
        used = {i for s in seqs for i in s}
        catalog = Catalog(catalog.items.select([n for n, i in enumerate(catalog.ids) if i in used]))
    return RecDataset(ds.name, catalog, Interactions(table), {**ds.extra_stats, **extra})


def kcore(ds: RecDataset, k: int, *, drop_unused_items: bool = False) -> RecDataset:
    """Keep interactions until every user and every item has at least ``k`` of them (iterated to a
    fixed point). The catalog is kept whole unless ``drop_unused_items``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t = ds.interactions.table.to_dict()
    users, seqs, stamps = t["user_id"], t["item_ids"], t["timestamps"]
    rounds = 0
    while True:
        counts = Counter(i for s in seqs for i in s)
        weak = {i for i, c in counts.items() if c < k}
        short = any(len(s) < k for s in seqs)
        if not weak and not short:
            break
        rounds += 1
        kept_users, kept_seqs, kept_stamps = [], [], []
        for u, s, ts in zip(users, seqs, stamps):
            keep = [n for n, i in enumerate(s) if i not in weak]
            if len(keep) >= k:
                kept_users.append(u)
                kept_seqs.append([s[n] for n in keep])
                kept_stamps.append([ts[n] for n in keep] if ts else [])
        users, seqs, stamps = kept_users, kept_seqs, kept_stamps
    return _with_sequences(ds, users, seqs, stamps, drop_unused_items, kcore=k, kcore_rounds=rounds)


def dedupe_consecutive(ds: RecDataset, *, drop_unused_items: bool = False) -> RecDataset:
    """Collapse runs of the same item in a sequence into its first occurrence."""
    t = ds.interactions.table.to_dict()
    seqs, stamps = [], []
    for s, ts in zip(t["item_ids"], t["timestamps"]):
        keep = [n for n in range(len(s)) if n == 0 or s[n] != s[n - 1]]
        seqs.append([s[n] for n in keep])
        stamps.append([ts[n] for n in keep] if ts else [])
    return _with_sequences(ds, t["user_id"], seqs, stamps, drop_unused_items, deduped_consecutive=True)
