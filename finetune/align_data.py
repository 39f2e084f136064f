"""Conversational datasets for itemic alignment: a seeded mix of the tasks.

Pools: ``persona``, ``sequential``, ``steering``, ``category_items`` and ``brand_items`` (``steering_data.py``) from
the training split's (history, next item) examples, ``captioning`` from every coded item in both directions,
``general`` from item Q&A. Each task takes ``round(fraction * num_examples)`` examples from its shuffled pool
(cycling when short); an item-list task on a catalog without (informative) categories / brands is left out.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import datasets
from tqdm.auto import tqdm

from think_rec import prompts
from think_rec.data.schema import RecDataset
from think_rec.data.split import LeaveOneOut
from think_rec.decoding.trie import SIDTrie
from think_rec.itemic.codebook import SIDCodebook

from .steering_data import SteeringRequests, items_example, steering_example

log = logging.getLogger(__name__)
PAPER_MIX = {"persona": 0.24, "sequential": 0.66, "captioning": 0.05, "general": 0.05}
_PART = {"type": datasets.Value("string"), "text": datasets.Value("string")}
FEATURES = datasets.Features({
    "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(_PART)}),
    "images": datasets.List(datasets.Image()),
    "task": datasets.Value("string"),
})


def task_counts(mix: dict[str, float], total: int) -> dict[str, int]:
    """Largest-remainder split of ``total`` by the (normalised) fractions in ``mix``."""
    unknown = set(mix) - set(prompts.TASKS)
    if unknown:
        raise ValueError(f"task_mix: unknown task {sorted(unknown)[0]!r}; known: {list(prompts.TASKS)}")
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"task_mix: fractions must be >= 0 with a positive sum, got {mix}")
    norm = {k: v / sum(mix.values()) for k, v in mix.items()}
    counts = {k: int(v * total) for k, v in norm.items()}
    for k in sorted(norm, key=lambda k: -(norm[k] * total - counts[k]))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def build_align_dataset(data: RecDataset, codebook: SIDCodebook, split: LeaveOneOut,
                        task_mix: dict[str, float] | None = None, num_examples: int | None = None,
                        seed: int = 0, with_images: bool = True, max_images: int = 4,
                        image_root: str | Path | None = None) -> datasets.Dataset:
    """``messages``/``images``/``task`` rows for the task mix (default: the paper's 24/66/5/5).

    ``num_examples`` defaults to what makes the sequential task use each training example once.
    """
    mix = {k: v for k, v in (task_mix or PAPER_MIX).items() if v > 0}
    task_counts(mix, 0)  # validates the mix
    cat = data.catalog.by_id
    train = split.train_examples()
    seq_pool = [(h, t) for h, t in zip(train["history"], train["target"]) if t in codebook.codes
                and all(i in codebook.codes for i in h)]
    items = [i for i in data.catalog.ids if i in codebook.codes]
    requests = SteeringRequests([cat[i] for i in items], seed=seed, popularity=Counter(t for _, t in seq_pool)) \
        if {"steering", "category_items", "brand_items"} & set(mix) else None
    if requests is not None:  # item lists need (informative) categories / brands; their share goes to the others
        lacking = {"category_items": not requests.categories, "brand_items": not requests.brands}
        for task in [t for t in mix if lacking.get(t)]:
            log.warning("task_mix: %s left out: the catalog has no %s to request", task, task.removesuffix("_items"))
            del mix[task]
        task_counts(mix, 0)
    mix = {k: v / sum(mix.values()) for k, v in mix.items()}
    makers: dict[str, tuple[list[Any], Callable[[Any], dict[str, Any]]]] = {
        "sequential": (seq_pool, lambda ht: prompts.sequential_example(
            ht[0], ht[1], cat, codebook, with_images, max_images, image_root)),
        "persona": (seq_pool, lambda ht: prompts.persona_example(
            ht[0], cat, codebook, with_images, max_images, image_root)),
        "captioning": ([(i, d) for i in items for d in ("sid2text", "text2sid")],
                       lambda idir: prompts.caption_example(idir[0], idir[1], cat, codebook)),
        "steering": (seq_pool, lambda ht: steering_example(ht[0], ht[1], cat, codebook, requests)),
        "category_items": (seq_pool, lambda ht: items_example(ht[0], ht[1], "category", cat, codebook, requests)),
        "brand_items": (seq_pool, lambda ht: items_example(ht[0], ht[1], "brand", cat, codebook, requests)),
        "general": ([(i, k) for i in items for k in range(len(prompts.load_templates()["tasks"]["general"]))],
                    lambda ik: prompts.general_example(ik[0], ik[1], cat)),
    }
    if num_examples is None:
        num_examples = round(len(seq_pool) / mix["sequential"]) if "sequential" in mix else len(seq_pool)
    counts = task_counts(mix, num_examples)
    rng = random.Random(seed)
    rows = []
    bar = tqdm(total=num_examples, desc="align examples", disable=num_examples < 2000)
    for task in prompts.TASKS:
        n = counts.get(task, 0)
        pool, make = makers[task]
        if n and not pool:
            raise ValueError(f"task {task!r}: nothing to build examples from (no coded items or histories)")
        order = rng.sample(range(len(pool)), len(pool))
        built = tries = 0
        while built < n:
            if tries >= len(pool) and built == 0:
                raise ValueError(f"task {task!r}: the catalog has no text to build examples from")
            ex = make(pool[order[tries % len(pool)]])
            tries += 1
            if ex is not None:
                rows.append({**ex, "task": task})
                built += 1
                bar.update()
    bar.close()
    rng.shuffle(rows)
    if any(r["images"] for r in rows):
        return datasets.Dataset.from_list(rows, features=FEATURES)
    features = datasets.Features({k: v for k, v in FEATURES.items() if k != "images"})
    return datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "images"} for r in rows],
                                      features=features)


def supervise_history(rows: datasets.Dataset, processor, trie: SIDTrie) -> datasets.Dataset:
    """``rows`` tokenised by the chat template as ``input_ids``/``completion_mask``: the assistant's answer and,
    as in the sequence phase, the SID of every history item after the first in the user turn are supervised."""
    begin, width = trie.first_token, trie.levels + 2

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        out = processor.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = (out[k][0] if out[k] and isinstance(out[k][0], list) else out[k]
                     for k in ("input_ids", "assistant_masks"))
        mask = list(mask)
        spans = [j for j, t in enumerate(ids) if t == begin and not mask[j]
                 and trie.item_at(ids[j:j + width]) is not None]
        for j in spans[1:]:  # the first history item is context
            mask[j:j + width] = [1] * width
        return {"input_ids": list(ids), "completion_mask": mask}

    return rows.map(encode, remove_columns=rows.column_names, desc="supervising history SIDs")
