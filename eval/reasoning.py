"""Reasoning evaluation: Recall/NDCG@5/10 of think-then-recommend, rationale quality, and the ablation.

Rationale quality, averaged over users (each user's first rationale, citations shown as titles):
``grounding``: share of rationales naming a history item (title or a significant part) or an
attribute (brand/category) of one; ``citations``: history items named; ``complete``: share ending a
sentence; ``closed_by_model``: share the model itself closed at a sentence end (the rest were cut back
to one at ``max_think_tokens``); ``consistency``: mean share of the top-k items having an attribute the
rationale names; ``leakage``: share naming the target's title; ``readability``: Flesch reading ease;
``mean_length``: words.

The ablation scores one model twice on the same examples: ``no_reasoning`` decodes with an empty think
(``<think></think>`` then the SID, ``max_think_tokens=0``), ``reasoning`` writes the rationale first.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import datasets
from tqdm.auto import tqdm

from think_rec.data.schema import column
from think_rec.decoding import ThinkResult, think_then_recommend
from think_rec.finetune.rationale_filters import (citation_title, cited_items, complete, consistency, grounding,
                                                  leakage, readability)
from think_rec.model.artefacts import RecModel
from think_rec.prompts import render_recommend_prompt

from .metrics import aggregate

QUALITY = ("grounding", "citations", "complete", "closed_by_model", "consistency", "leakage", "readability",
           "mean_length")


def rationale_quality(results: Sequence[ThinkResult], histories: Sequence[Sequence[str]], targets: Sequence[str],
                      items: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``QUALITY`` means over users (see the module docstring); an empty think scores 0 on each."""
    if not results:
        raise ValueError("no results to score")
    totals = dict.fromkeys(QUALITY, 0.0)
    for res, hist, target in zip(results, histories, targets):
        text = res.rationales[0] if res.rationales else ""
        hist_items = [items[i] for i in hist]
        totals["grounding"] += grounding(text, hist_items)
        totals["citations"] += len(cited_items(text, hist_items))
        totals["complete"] += complete(text)
        totals["closed_by_model"] += bool(res.closed_by_model and res.closed_by_model[0])
        totals["consistency"] += consistency(text, [items[i] for i, _ in res.items])
        totals["leakage"] += leakage(text, items[target], hist_items) if text else False
        totals["readability"] += readability(text)
        totals["mean_length"] += len(text.split())
    return {name: value / len(results) for name, value in totals.items()}


def evaluate_reasoning(rec: RecModel, examples: datasets.Dataset, *, think: bool = True, max_history: int = 20,
                       k: int = 10, num_beams: int | None = None, batch_size: int = 16, max_think_tokens: int = 96,
                       num_rationales: int = 1, do_sample: bool = False, progress: bool = True,
                       exclude_history: bool = False,
                       desc: str = "reasoning") -> tuple[dict[str, Any], list[ThinkResult]]:
    """Ranking metrics + ``QUALITY`` of ``think_then_recommend`` with ``rec`` (loaded with its data) on ``examples``
    (history, target); with ``think=False`` the think is empty. Returns ``(metrics, results)``."""
    model, processor, items = rec.model, rec.processor, rec.items
    histories = [h[-max_history:] for h in column(examples, "history")]
    targets = column(examples, "target")
    results: list[ThinkResult] = []
    start = time.perf_counter()
    for s in tqdm(range(0, len(histories), batch_size), desc=desc, disable=not progress):
        batch = histories[s:s + batch_size]
        prompts = [render_recommend_prompt(h, items, rec.codebook, processor, with_images=False).text for h in batch]
        citations = [{i: citation_title(items[i]) for i in h} for h in batch]
        results += think_then_recommend(model, processor, prompts, rec.trie, k=k, num_beams=num_beams,
                                        citations=citations, num_rationales=num_rationales if think else 1, do_sample=do_sample and think,
                                        max_think_tokens=max_think_tokens if think else 0,
                                        exclude=[set(h) for h in batch] if exclude_history else None)
    rankings = [[i for i, _ in r.items] for r in results]
    metrics = {**aggregate(rankings, targets, (5, 10)), **rationale_quality(results, histories, targets, items),
               "users": len(targets), "eval_seconds": round(time.perf_counter() - start, 1)}
    return metrics, results


def reasoning_ablation(rec: RecModel, examples: datasets.Dataset,
                       **kwargs) -> tuple[list[dict[str, Any]], list[ThinkResult]]:
    """Rows ``no_reasoning`` (empty think) and ``reasoning`` for one model on the same examples, plus the
    reasoning results (for examples to show)."""
    rows, shown = [], []
    for system, think in (("no_reasoning", False), ("reasoning", True)):
        metrics, results = evaluate_reasoning(rec, examples, think=think, desc=system, **kwargs)
        rows.append({"system": system, **metrics})
        shown = results
    return rows, shown
