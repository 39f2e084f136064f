"""Reasoning evaluation: Recall/NDCG@5/10 of think-then-recommend, rationale quality, and the ablation.

Rationale quality, averaged over users (each user's first rationale, citations shown as titles):
``grounding``: share of rationales naming a history item (title or a significant part) or an
attribute (brand/category) of one; ``citations``: history items named; ``complete``: share ending a
sentence; ``closed_by_model``: share the model itself closed at a sentence end (the rest were cut back
to one at ``max_think_tokens``); ``consistency``: mean share of the top-k items having an attribute the
rationale names; ``leakage``: share naming the target's title; ``readability``: Flesch reading ease;
``mean_length``: words.

Faithfulness checks what a rationale claims about the next item (``rationale_claims``: every brand and category
it names outside citations, the words it says the item is "about", its price band against what the user usually
pays, and "like <cited item>" when it names nothing else) against the recommended items (``faithful``):
``faithful@1``: share of rationales whose claims all hold for the top-1 item; ``faithful@10``: mean share of the
top-10 items for which they all hold (a rationale without claims holds for every item: ``claims``, the mean
number of claims, tells those apart); ``contradictions``: share of self-contradictory rationales (two brands,
two price bands, or categories no one catalog item carries together claimed for the next item; or a brand
attributed to a cited item that does not carry it).

The ablation scores one model twice on the same examples: ``no_reasoning`` decodes with an empty think
(``<think></think>`` then the SID, ``max_think_tokens=0``), ``reasoning`` writes the rationale first.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import datasets
from tqdm.auto import tqdm

from think_rec.data.schema import column
from think_rec.decoding import ThinkResult, think_then_recommend
from think_rec.finetune.rationale_filters import (citation_title, cited_items, complete, consistency, content_tokens,
                                                  grounding, leakage, mentions, readability)
from think_rec.finetune.rationales import common_prefix, price_band, usual_price
from think_rec.model.artefacts import RecModel
from think_rec.prompts import served_prompt
from think_rec.steering import Vocabulary

from .metrics import aggregate

FAITHFULNESS = ("faithful@1", "faithful@10", "contradictions", "claims")
QUALITY = ("grounding", "citations", "complete", "closed_by_model", "consistency", "leakage", "readability",
           "mean_length", *FAITHFULNESS)
Item = dict[str, Any]
QUOTED = re.compile(r'"([^"]*)"')
ABOUT = re.compile(r"\babout\s+(.+?)\s*(?:,|[.!?;]|$)", re.I)
LIKE = re.compile(r"\blike\b", re.I)
PRICE_CLAIMS = {"like": re.compile(r"\bpriced like\b", re.I), "cheaper": re.compile(r"\bcheaper\b", re.I),
                "more": re.compile(r"\b(?:costs? more|more expensive)\b", re.I)}


class ClaimVocabulary(Vocabulary):
    """The catalog's brand and category names (``steering.Vocabulary``) and the category sets its items carry."""

    def __init__(self, items: Iterable[Item]):
        rows = [{"brand": it.get("brand"), "categories": list(it.get("categories") or []), "price": it.get("price")}
                for it in items]
        super().__init__(rows)
        self.category_sets = {frozenset(c.casefold() for c in r["categories"]) for r in rows}

    def carried_together(self, categories: set[str]) -> bool:
        """Some catalog item carries all of ``categories``."""
        want = {c.casefold() for c in categories}
        return not want or any(want <= s for s in self.category_sets)


@dataclass
class Claims:
    """What a rationale says about the next item: categories, brands, title words, price bands (against
    ``usual_price``), cited items it is "like" with no attribute named; and why it contradicts itself."""

    categories: set[str] = field(default_factory=set)
    brands: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    prices: set[str] = field(default_factory=set)
    like: list[Item] = field(default_factory=list)
    usual_price: float | None = None
    contradictions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.categories) + len(self.brands) + len(self.words) + len(self.prices) + len(self.like)


def _sentences(text: str) -> list[tuple[str, list[str]]]:
    """Per sentence: its text with quoted titles blanked, and the quoted titles."""
    quotes: list[str] = []

    def hide(m: re.Match) -> str:
        quotes.append(m.group(1))
        return f"\x00{len(quotes) - 1}\x00"

    out = []
    for sentence in re.split(r"(?<=[.!?])[\"')\]]*\s+", QUOTED.sub(hide, text or "")):
        refs = [quotes[int(i)] for i in re.findall(r"\x00(\d+)\x00", sentence)]
        out.append((re.sub(r"\x00\d+\x00", " ", sentence), refs))
    return out


def _sentence_claims(claims: Claims, plain: str, cited: Sequence[Item], vocab: ClaimVocabulary) -> None:
    """Add one sentence's claims (``plain``: its text without citations; ``cited``: the items it cites)."""
    if about := ABOUT.search(plain):
        claims.words.update(content_tokens(about.group(1)))
        plain = plain[:about.start()] + plain[about.end():]
    prices = {band for band, pattern in PRICE_CLAIMS.items() if pattern.search(plain)}
    brands, cats = vocab.brands_in(plain), vocab.categories_in(plain)
    claims.prices |= prices
    claims.brands |= brands
    claims.categories |= cats
    for item in cited if brands else ():
        if (item.get("brand") or "").casefold() not in {b.casefold() for b in brands}:
            claims.contradictions.append(f'{"/".join(sorted(brands))} attributed to "{citation_title(item)}"')
    if not (about or prices or brands or cats) and LIKE.search(plain):
        claims.like += cited


def rationale_claims(text: str, vocab: ClaimVocabulary, history: Sequence[Item]) -> Claims:
    """The claims ``text`` makes about the next item (see the module docstring); ``history``: the items it may
    cite, whose prices are what the user usually pays."""
    claims = Claims(usual_price=usual_price(history))
    for plain, quoted in _sentences(text):
        keys = {q.casefold() for q in quoted}
        cited = [h for h in history if citation_title(h) and (citation_title(h).casefold() in keys
                                                               or mentions(plain, citation_title(h)))]
        for item in cited:
            plain = re.sub(re.escape(citation_title(item)), " ", plain, flags=re.I)
        _sentence_claims(claims, plain, cited, vocab)
    if len({b.casefold() for b in claims.brands}) > 1:
        claims.contradictions.append("brands " + ", ".join(sorted(claims.brands)))
    if len(claims.prices) > 1:
        claims.contradictions.append("price bands " + ", ".join(sorted(claims.prices)))
    if not vocab.carried_together(claims.categories):
        claims.contradictions.append("categories " + ", ".join(sorted(claims.categories)))
    return claims


def _alike(cited: Item, item: Item) -> bool:
    """Shares the brand, a title word or the first two levels of the category path."""
    same_brand = bool(item.get("brand")) and (cited.get("brand") or "").casefold() == item["brand"].casefold()
    words = set(content_tokens(cited.get("title", ""))) & set(content_tokens(item.get("title", "")))
    return same_brand or bool(words) or len(common_prefix(cited.get("categories") or [],
                                                          item.get("categories") or [])) >= 2


def faithful(claims: Claims, item: Item) -> bool:
    """Every claim holds for ``item`` (an unknown price holds no price band); vacuously true without claims."""
    cats = {c.casefold() for c in item.get("categories") or []}
    brand = (item.get("brand") or "").casefold()
    price = item.get("price")
    band = price_band(price, claims.usual_price) if price and claims.usual_price else None
    return ({c.casefold() for c in claims.categories} <= cats and all(b.casefold() == brand for b in claims.brands)
            and claims.words <= set(content_tokens(item.get("title", ""))) and all(p == band for p in claims.prices)
            and all(_alike(c, item) for c in claims.like))


def rationale_quality(results: Sequence[ThinkResult], histories: Sequence[Sequence[str]], targets: Sequence[str],
                      items: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``QUALITY`` means over users (see the module docstring); an empty think scores 0 on each but
    ``faithful@k`` (it claims nothing, so it holds for any item)."""
    if not results:
        raise ValueError("no results to score")
    totals = dict.fromkeys(QUALITY, 0.0)
    vocab = ClaimVocabulary(items.values())
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
        for name, value in _faithfulness(rationale_claims(text, vocab, hist_items),
                                         [items[i] for i, _ in res.items]).items():
            totals[name] += value
    return {name: value / len(results) for name, value in totals.items()}


def _faithfulness(claims: Claims, ranked: Sequence[Item]) -> dict[str, float]:
    """``faithful@1``, ``faithful@10``, ``contradictions`` and ``claims`` of one rationale (0 on an empty list)."""
    holds = [faithful(claims, item) for item in ranked[:10]]
    return {"faithful@1": float(holds[0]) if holds else 0.0, "faithful@10": sum(holds) / len(holds) if holds else 0.0,
            "contradictions": float(bool(claims.contradictions)), "claims": float(len(claims))}


def evaluate_reasoning(rec: RecModel, examples: datasets.Dataset, *, think: bool = True,
                       max_history: int | None = None, k: int = 10, num_beams: int | None = None, batch_size: int = 16,
                       max_think_tokens: int = 96, num_rationales: int = 1, do_sample: bool = False,
                       progress: bool = True, exclude_history: bool | None = None,
                       desc: str = "reasoning") -> tuple[dict[str, Any], list[ThinkResult]]:
    """Ranking metrics + ``QUALITY`` of ``think_then_recommend`` with ``rec`` (loaded with its data) on ``examples``
    (history, target), as served: the served prompt, beam width, history exclusion and prior of the model's
    artefact (``max_history`` / ``num_beams`` / ``exclude_history`` None); with ``think=False`` the think is empty.
    Returns ``(metrics, results)``."""
    model, processor, items, served = rec.model, rec.processor, rec.items, rec.served
    max_history = max_history or served.max_history
    exclude = served.exclude_history if exclude_history is None else exclude_history
    histories = [h[-max_history:] for h in column(examples, "history")]
    targets = column(examples, "target")
    results: list[ThinkResult] = []
    start = time.perf_counter()
    tok = getattr(processor, "tokenizer", processor)
    for s in tqdm(range(0, len(histories), batch_size), desc=desc, disable=not progress):
        batch = histories[s:s + batch_size]
        prompts = [served_prompt(tok, h, items, rec.codebook, max_history) for h in batch]
        citations = [{i: citation_title(items[i]) for i in h} for h in batch]
        results += think_then_recommend(
            model, processor, prompts, rec.trie, k=k, num_beams=num_beams or served.num_beams, citations=citations,
            num_rationales=num_rationales if think else 1, do_sample=do_sample and think,
            max_think_tokens=max_think_tokens if think else 0, exclude=[set(h) for h in batch] if exclude else None,
            histories=batch, prior=rec.prior)
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
