"""Checks on teacher rationales: no target leakage, grounded in the history, and (rejection
sampling) the target stays reachable when the model is conditioned on the rationale.

Rejected rationales become an empty think ``""``, as in the official OneRec-Think code.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from think_rec.decoding.think import SENTENCE_END

STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "de la le les el los las der die das du des del un une ii iii part vol edition new set pack "
    "small medium large".split())
LEAK_NGRAM = 4  # a run of this many target-title tokens, absent from every history title, leaks it

Item = dict[str, Any]


def tokens(text: str) -> list[str]:
    """Lower-case word tokens (letters/digits, inner apostrophes kept)."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", (text or "").lower())


def content_tokens(text: str) -> list[str]:
    """Tokens that carry meaning: not stopwords, at least 3 characters."""
    return [t for t in tokens(text) if t not in STOPWORDS and len(t) >= 3]


def mentions(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words, case- and punctuation-insensitively."""
    words = tokens(phrase)
    if not words:
        return False
    return re.search(r"(?<![a-z0-9])" + r"\W+".join(map(re.escape, words)) + r"(?![a-z0-9])",
                     (text or "").lower()) is not None


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def display_title(title: str) -> str:
    """``"Silence of the Lambs, The"`` -> ``"The Silence of the Lambs"`` (MovieLens style)."""
    m = re.match(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El)$", (title or "").strip())
    return f"{m.group(2)} {m.group(1)}" if m else (title or "").strip()


def citation_title(item: Item) -> str:
    """How a rationale names an item: its display title without a closing period."""
    return display_title(item.get("title") or "").rstrip(". ")


def leakage(rationale: str, target: Item, history_items: Sequence[Item] = (), ngram: int = LEAK_NGRAM) -> bool:
    """The target's title appears verbatim (unless a history item has that very title: a re-bought product, which
    the rationale may cite), or a run of ``ngram`` of its tokens that no history title has."""
    title = target.get("title") or ""
    rebought = any(tokens(display_title(h.get("title") or "")) == tokens(display_title(title)) for h in history_items)
    if not rebought and (mentions(rationale, title) or mentions(rationale, display_title(title))):
        return True
    words = tokens(title)
    if len(words) < ngram:
        return False
    shared = set().union(*(_ngrams(tokens(h.get("title", "")), ngram) for h in history_items)) \
        if history_items else set()
    return bool((_ngrams(words, ngram) - shared) & _ngrams(tokens(rationale), ngram))


def title_mentioned(text: str, title: str) -> bool:
    """``title`` or a significant part of it (a run of >= half its tokens, at least 2, or its only
    content word) occurs in ``text``."""
    if mentions(text, title) or mentions(text, display_title(title)):
        return True
    words = tokens(display_title(title))
    if len(words) == 1:
        return False
    n = max(2, math.ceil(len(words) / 2))
    runs = [g for g in _ngrams(words, n) if any(w not in STOPWORDS and len(w) >= 3 for w in g)]
    text_grams = _ngrams(tokens(text), n)
    return any(g in text_grams for g in runs)


def attributes(item: Item) -> set[str]:
    """Nameable attributes: brand and every category (genres for films)."""
    out = {c for c in item.get("categories") or [] if c}
    if item.get("brand"):
        out.add(item["brand"])
    return out


def grounding(rationale: str, history_items: Sequence[Item], target: Item | None = None) -> bool:
    """The rationale names a history item (title or a significant part) or an attribute of one
    (with ``target``: an attribute the target shares)."""
    if any(title_mentioned(rationale, h.get("title", "")) for h in history_items):
        return True
    attrs = set().union(*(attributes(h) for h in history_items)) if history_items else set()
    if target is not None:
        attrs &= attributes(target)
    return any(mentions(rationale, a) for a in attrs)


def cited_items(rationale: str, history_items: Sequence[Item]) -> list[Item]:
    """The history items whose title (or a significant part of it) the rationale names."""
    return [h for h in history_items if title_mentioned(rationale, h.get("title", ""))]


def complete(rationale: str) -> bool:
    """The rationale ends a sentence (``.``, ``!`` or ``?``, closing quotes allowed)."""
    return bool(SENTENCE_END.search((rationale or "").strip()))


def readability(text: str) -> float:
    """Flesch reading ease (higher reads easier; 60-70 is plain English); syllables are vowel groups."""
    words = re.findall(r"[A-Za-z]+", text or "")
    if not words:
        return 0.0
    sentences = max(1, len(re.findall(r"[.!?]+(?=\s|$)", text)))
    syllables = sum(max(1, len(re.findall(r"[aeiouy]+", w.lower()))) for w in words)
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * syllables / len(words)


def consistency(rationale: str, recommended_items: Sequence[Item]) -> float:
    """Share of recommended items having an attribute (brand/category) that the rationale names."""
    if not recommended_items:
        return 0.0
    hits = sum(any(mentions(rationale, a) for a in attributes(item)) for item in recommended_items)
    return hits / len(recommended_items)


def filter_rationale(text: str, target_item: Item, pruned_items: Sequence[Item]) -> tuple[bool, str]:
    """``(ok, reason)``; reason is ``"ok"``, ``"empty"``, ``"leakage"``, ``"incomplete"`` (no sentence end)
    or ``"ungrounded"`` (cites no history item by title)."""
    if not (text or "").strip():
        return False, "empty"
    if leakage(text, target_item, pruned_items):
        return False, "leakage"
    if not complete(text):
        return False, "incomplete"
    if not cited_items(text, pruned_items):
        return False, "ungrounded"
    return True, "ok"


def rejection_sample(examples: Sequence[Any], rationales: Sequence[str],
                     rank_fn: Callable[[Any, str], Sequence[str]] | None, top_n: int = 10,
                     progress: bool = True) -> tuple[list[str], dict[str, float]]:
    """Keep a rationale when it passes ``filter_rationale`` and, under ``rank_fn(example, rationale)``
    (ranked item ids, e.g. constrained beam search), the target is within ``top_n``; others become "".

    ``examples`` carry ``target`` and ``history`` item dicts (``RationaleRequest`` or plain dicts)."""
    if len(examples) != len(rationales):
        raise ValueError(f"{len(examples)} examples for {len(rationales)} rationales")
    stats = {"accepted": 0, "rejected_leakage": 0, "rejected_incomplete": 0, "rejected_ungrounded": 0,
             "rejected_rank": 0}
    kept = []
    for ex, text in tqdm(list(zip(examples, rationales)), desc="rejection sampling", disable=not progress):
        target, history = _get(ex, "target"), _get(ex, "history")
        ok, reason = filter_rationale(text, target, history)
        if not ok:
            stats[f"rejected_{'ungrounded' if reason == 'empty' else reason}"] += 1
        elif rank_fn is not None and target["item_id"] not in list(rank_fn(ex, text))[:top_n]:
            stats["rejected_rank"] += 1
        else:
            stats["accepted"] += 1
            kept.append(text)
            continue
        kept.append("")
    stats["acceptance_rate"] = stats["accepted"] / max(len(rationales), 1)
    return kept, stats


def _get(example: Any, name: str) -> Any:
    return example[name] if isinstance(example, dict) else getattr(example, name)
