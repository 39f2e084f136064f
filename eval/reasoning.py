"""Reasoning evaluation: Recall/NDCG@5/10 of think-then-recommend, rationale quality, and the ablation.

Rationale quality, averaged over users (each user's rationale as the model wrote it, the one
``ClaimChecker.choose`` shows where several were drawn, citations shown as titles): ``grounding``: share of
rationales naming a history item (title or a significant part) or an attribute (brand/category) of one;
``citations``: history items named; ``complete``: share ending a sentence; ``closed_by_model``: share the model
itself closed at a sentence end (the rest were cut back to one at ``max_think_tokens``); ``consistency``: mean
share of the top-k items having an attribute the rationale names; ``leakage``: share naming the target's title;
``readability``: Flesch reading ease; ``mean_length``: words.

Faithfulness (``think_rec.decoding.claims``) checks what the rationale claims about the next item against the
recommended items, which follow the rationale's claims with the served ``follow_weight``: ``faithful@1``: share of
rationales whose claims all hold for the top-1 item; ``faithful@10``: mean share of the top-10 items for which they
all hold (a rationale without claims holds for every item: ``claims``, the mean number of claims, tells those
apart); ``contradictions``: share of self-contradictory rationales. What the page shows is the rationale kept to
the sentences that hold for the top item (``ClaimChecker.shorten``): ``shown_faithful@1`` (1 by that rule unless
an item lacks the data) and ``shortened``, the share of rationales it cut. ``rationale_accuracy``: share of the
rationales with claims whose claims all hold for the **target** (does the model reason towards the right item?).
``claiming``: share of rationales that claim something; ``faithful@1_claiming``: ``faithful@1`` among them (a
rationale without claims holds vacuously, so this is the figure a less assertive model cannot raise).

The ablation scores one model on the same examples: ``no_reasoning`` decodes with an empty think
(``<think></think>`` then the SID, ``max_think_tokens=0``), ``reasoning`` writes the rationale first and ranks as
served (``served.json``: ``think_ranking``, ``follow_weight``, chosen on valid users when stage 2 ends,
``choose_think``) with the rationale ``ClaimChecker.choose`` picks of the ``rationale_samples`` drawn;
``reasoning_greedy`` is the same with the greedy rationale alone (the model's first draft: what ``choose`` improves
on); ``reasoning_conditioned`` ranks after the greedy rationale without following it (the stage-2 model as
trained); ``oracle_rationale`` (``bench reason``) gives it the teacher's rationale for the true target.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import datasets
from tqdm.auto import tqdm

from think_rec.data.schema import column
from think_rec.decoding import ThinkResult, think_then_recommend
from think_rec.decoding.claims import ClaimChecker, Claims, faithful
from think_rec.finetune.rationale_filters import (citation_title, cited_items, complete, consistency, grounding,
                                                  leakage, readability)
from think_rec.model.artefacts import RecModel
from think_rec.prompts import served_prompt

from .metrics import ndcg_at_k, ranked_metrics, standard_error

FAITHFULNESS = ("faithful@1", "faithful@10", "contradictions", "claims", "shown_faithful@1", "shortened",
                "rationale_accuracy", "claiming", "faithful@1_claiming")
QUALITY = ("grounding", "citations", "complete", "closed_by_model", "consistency", "leakage", "readability",
           "mean_length", *FAITHFULNESS)
FOLLOW_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
Item = dict[str, Any]


def rationale_quality(results: Sequence[ThinkResult], histories: Sequence[Sequence[str]], targets: Sequence[str],
                      items: dict[str, Item], checker: ClaimChecker | None = None) -> dict[str, float]:
    """``QUALITY`` means over users (see the module docstring); an empty think scores 0 on each but
    ``faithful@k`` (it claims nothing, so it holds for any item)."""
    if not results:
        raise ValueError("no results to score")
    checker = checker or ClaimChecker(items)
    totals = dict.fromkeys(QUALITY, 0.0)
    for res, hist, target in zip(results, histories, targets):
        text = res.rationales[0] if res.rationales else ""
        hist_items = [items[i] for i in hist]
        ranked = [items[i] for i, _ in res.items]
        totals["grounding"] += grounding(text, hist_items)
        totals["citations"] += len(cited_items(text, hist_items))
        totals["complete"] += complete(text)
        totals["closed_by_model"] += bool(res.closed_by_model and res.closed_by_model[0])
        totals["consistency"] += consistency(text, ranked)
        totals["leakage"] += leakage(text, items[target], hist_items) if text else False
        totals["readability"] += readability(text)
        totals["mean_length"] += len(text.split())
        claims = checker.claims(text, hist)
        faith = _faithfulness(claims, ranked)
        for name, value in faith.items():
            totals[name] += value
        shown = checker.shorten(text, hist, res.items[0][0] if res.items else None)
        totals["shortened"] += shown != text
        totals["shown_faithful@1"] += _faithfulness(checker.claims(shown, hist), ranked)["faithful@1"]
        if len(claims):
            totals["claiming"] += 1
            totals["rationale_accuracy"] += faithful(claims, items[target])
            totals["faithful@1_claiming"] += faith["faithful@1"]
    out = {name: value / len(results) for name, value in totals.items()}
    for name in ("rationale_accuracy", "faithful@1_claiming"):  # means over the rationales that claim something
        out[name] = totals[name] / totals["claiming"] if totals["claiming"] else 0.0
    return out


def _faithfulness(claims: Claims, ranked: Sequence[Item]) -> dict[str, float]:
    """``faithful@1``, ``faithful@10``, ``contradictions`` and ``claims`` of one rationale (0 on an empty list)."""
    holds = [faithful(claims, item) for item in ranked[:10]]
    return {"faithful@1": float(holds[0]) if holds else 0.0, "faithful@10": sum(holds) / len(holds) if holds else 0.0,
            "contradictions": float(bool(claims.contradictions)), "claims": float(len(claims))}


def think_results(rec: RecModel, examples: datasets.Dataset, *, think: bool = True, condition: bool | None = None,
                  k: int = 10, max_history: int | None = None, num_beams: int | None = None, batch_size: int = 16,
                  max_think_tokens: int = 96, num_rationales: int | None = None,
                  exclude_history: bool | None = None, rationales: Sequence[str] | None = None,
                  progress: bool = True, desc: str = "reasoning") -> tuple[list[ThinkResult], list[list[str]]]:
    """``think_then_recommend`` with ``rec`` (loaded with its data) on ``examples`` (history, target) as served (the
    served prompt, beam width, history exclusion, prior, ``think_ranking`` and ``rationale_samples`` of the artefact
    where an argument is None), top ``k`` before following; ``think=False``: an empty think. Returns the results
    and the histories."""
    model, processor, items, served = rec.model, rec.processor, rec.items, rec.served
    max_history = max_history or served.max_history
    num_rationales = (num_rationales or served.rationale_samples) if think and rationales is None else 1
    exclude = served.exclude_history if exclude_history is None else exclude_history
    condition = served.ranks_after_rationale if condition is None else condition
    histories = [list(h[-max_history:]) for h in column(examples, "history")]
    tok = getattr(processor, "tokenizer", processor)
    results: list[ThinkResult] = []
    for s in tqdm(range(0, len(histories), batch_size), desc=desc, disable=not progress):
        batch = histories[s:s + batch_size]
        prompts = [served_prompt(tok, h, items, rec.codebook, max_history) for h in batch]
        citations = [{i: citation_title(items[i]) for i in h} for h in batch]
        results += think_then_recommend(
            model, processor, prompts, rec.trie, k=k, num_beams=num_beams or served.num_beams, citations=citations,
            num_rationales=num_rationales, do_sample=num_rationales > 1,
            max_think_tokens=max_think_tokens if think else 0, exclude=[set(h) for h in batch] if exclude else None,
            histories=batch, prior=rec.prior, condition=condition,
            rationales=None if rationales is None else rationales[s:s + batch_size])
    return results, histories


def followed(results: Sequence[ThinkResult], histories: Sequence[Sequence[str]], checker: ClaimChecker,
             weight: float, k: int = 10) -> list[ThinkResult]:
    """Each result as served: the rationale ``ClaimChecker.choose`` shows moved first, the top ``k`` items following
    it (``ClaimChecker.follow``)."""
    out = []
    for res, hist in zip(results, histories):
        n, items = checker.choose(res.rationales, hist, res.items, weight, k)
        first = [n, *(i for i in range(len(res.rationales)) if i != n)]

        def order(values: list) -> list:
            return [values[i] for i in first] if len(values) == len(first) else values

        out.append(ThinkResult(order(res.rationales), items, order(res.cited), order(res.closed_by_model)))
    return out


def ranking_metrics(results: Sequence[ThinkResult], targets: Sequence[str]) -> dict[str, float]:
    """``ranked_metrics`` of the results' items."""
    return ranked_metrics([[i for i, _ in r.items] for r in results], targets)


def evaluate_reasoning(rec: RecModel, examples: datasets.Dataset, *, think: bool = True,
                       follow_weight: float | None = None, k: int = 10, progress: bool = True,
                       desc: str = "reasoning", **kwargs) -> tuple[dict[str, Any], list[ThinkResult]]:
    """Ranking metrics + ``QUALITY`` of thinking as served (``think_results``; the items follow the rationale with
    the served ``follow_weight`` unless given). Returns ``(metrics, results)``."""
    start = time.perf_counter()
    weight = rec.served.follow_weight if follow_weight is None else follow_weight
    pool = max(k, kwargs.get("num_beams") or rec.served.num_beams) if weight and think else k
    raw, histories = think_results(rec, examples, think=think, k=pool, progress=progress, desc=desc, **kwargs)
    checker = ClaimChecker(rec.items)
    results = followed(raw, histories, checker, weight if think else 0.0, k)
    targets = column(examples, "target")
    metrics = {**ranking_metrics(results, targets),
               **rationale_quality(results, histories, targets, rec.items, checker), "users": len(targets),
               "eval_seconds": round(time.perf_counter() - start, 1)}
    return metrics, results


def choose_think(rec: RecModel, examples: datasets.Dataset, weights: Sequence[float] = FOLLOW_WEIGHTS,
                 min_gain_se: float = 2.0, **kwargs) -> tuple[tuple[str, float], dict[str, Any]]:
    """The served thinking ranking chosen on ``examples`` (valid users): ``think_ranking`` (``rationale``: after the
    rationale; ``history``: after an empty think, the rationale only explains) and ``follow_weight``, by NDCG@10 and
    ``faithful@1`` (``think_choice``). One rationale and two rankings per user; the grid is re-ranked offline.
    Returns the choice and each pair's valid NDCG@10 and ``faithful@1``."""
    pool = max(10, kwargs.get("num_beams") or rec.served.num_beams)
    cond, histories = think_results(rec, examples, think=True, condition=True, k=pool, desc="think: rationale",
                                    **kwargs)
    empty, _ = think_results(rec, examples, think=False, condition=True, k=pool, desc="think: history", **kwargs)
    explain = [ThinkResult(c.rationales, e.items, c.cited, c.closed_by_model) for c, e in zip(cond, empty)]
    checker, targets = ClaimChecker(rec.items), column(examples, "target")

    def per_user(results: Sequence[ThinkResult]) -> list[float]:
        return [ndcg_at_k([i for i, _ in r.items], t, 10) for r, t in zip(results, targets)]

    def first_holds(results: Sequence[ThinkResult]) -> list[float]:
        return [float(bool(r.items) and faithful(checker.claims(r.rationales[0] if r.rationales else "", h),
                                                 rec.items[r.items[0][0]])) for r, h in zip(results, histories)]

    ndcg, faith = {}, {}
    for mode, res in (("rationale", cond), ("history", explain)):
        for w in weights:
            shown = followed(res, histories, checker, w)
            ndcg[mode, w], faith[mode, w] = per_user(shown), first_holds(shown)
    none = per_user(empty)
    best, gain_se = think_choice(ndcg, faith, none, min_gain_se)

    def means(values: dict[tuple[str, float], list[float]]) -> dict[str, float]:
        return {f"{m}@{w:g}": sum(v) / len(v) for (m, w), v in values.items()}

    return best, {"valid_users": len(targets), "valid_ndcg@10": means(ndcg), "valid_faithful@1": means(faith),
                  "valid_ndcg@10_no_reasoning": sum(none) / len(none), "min_gain_se": min_gain_se,
                  "chosen_gain_in_se": gain_se}


def think_choice(ndcg: dict[tuple[str, float], list[float]], faith: dict[tuple[str, float], list[float]],
                 none: Sequence[float], min_gain_se: float) -> tuple[tuple[str, float], float | None]:
    """The served (ranking, follow weight) pair, from per-user valid NDCG@10 (``ndcg``), ``faithful@1`` (``faith``)
    and the empty think's NDCG@10 (``none``): the most faithful of the pairs that gain at least ``min_gain_se``
    paired standard errors over ``none`` (the think step helps), else of those whose mean gain is not below 0 (it
    explains without lowering accuracy; ``("history", 0.0)``, the empty think's own ranking, always is). Ties: the
    higher NDCG@10, ``history``, the smaller weight. Returns the choice and its gain in standard errors."""
    def gain(pair: tuple[str, float]) -> tuple[float, float | None]:
        diff = [a - b for a, b in zip(ndcg[pair], none)]
        mean, se = sum(diff) / len(diff), standard_error(diff)
        return mean, (mean / se if se else None)  # None: every user gained the same

    gains = {p: gain(p) for p in ndcg}
    helping = [p for p, (g, g_se) in gains.items() if (g > 0 if g_se is None else g_se >= min_gain_se)]
    eligible = helping or [p for p, (g, _) in gains.items() if g >= 0] or [("history", 0.0)]

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values)

    best = max(eligible, key=lambda p: (mean(faith[p]), mean(ndcg[p]), p[0] == "history", -p[1]))
    return best, gains[best][1] if best in gains else 0.0


def reasoning_ablation(rec: RecModel, examples: datasets.Dataset,
                       **kwargs) -> tuple[list[dict[str, Any]], list[ThinkResult]]:
    """Rows ``no_reasoning`` (empty think), ``reasoning`` (as served; with ``ndcg@10_gain_se``, the standard error
    of its per-user NDCG@10 gain over ``no_reasoning`` relative to that row's mean), ``reasoning_greedy`` (as served
    but the greedy rationale alone: the model's first draft, before ``ClaimChecker.choose`` has others to pick from)
    and ``reasoning_conditioned`` (the greedy rationale, ranked after it, not following it) on the same examples,
    plus the served reasoning results."""
    rows, per_user, shown = [], {}, []
    targets = column(examples, "target")
    greedy = {"num_rationales": 1}
    for system, think, extra in (("no_reasoning", False, {}), ("reasoning", True, {}),
                                 ("reasoning_greedy", True, greedy),
                                 ("reasoning_conditioned", True, {"condition": True, "follow_weight": 0.0, **greedy})):
        metrics, results = evaluate_reasoning(rec, examples, think=think, desc=system, **kwargs, **extra)
        per_user[system] = [ndcg_at_k([i for i, _ in r.items], t, 10) for r, t in zip(results, targets)]
        rows.append({"system": system, **metrics})
        shown = results if system == "reasoning" else shown
    base = rows[0]["ndcg@10"]
    diff = [a - b for a, b in zip(per_user["reasoning"], per_user["no_reasoning"])]
    rows[1]["ndcg@10_gain_se"] = standard_error(diff) / base if base else None
    return rows, shown
