"""Steering tasks: a user's request derived from the target item, in the served chat prompt, answered by its SID.

From a training (history, target) pair, ``SteeringRequests`` phrases (rotating templates of ``prompts/steering.yaml``)
a request the target satisfies: one of its informative categories, its brand, a price band around its price, content
words of its title (never all of them), or an exclusion of a brand/category the target does not have (taken from
the history when it can). A quarter are two turns: a first request (neutral or category), then a refinement.
The prompt carries the dialogue and the constraints line the serving parser (``think_rec.steering``) derives from
it, exactly as served; an example whose parsed constraints would exclude the target is never built.

``items_example`` (tasks ``category_items``, ``brand_items``) is the dense variant: one request for the target's
category (or brand), answered by the SIDs of the target and other items of that category (brand), every one
labelled, so each example teaches the word several of the items it means.
"""
from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from think_rec.itemic.codebook import SIDCodebook
from think_rec.prompts import PROMPTS_DIR, Items, chat_example
from think_rec.steering import Constraints, Vocabulary, parse

KINDS = ("neutral", "category", "brand", "price", "keywords", "exclude_brand", "exclude_category")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")


@functools.cache
def steering_templates(path: str | Path = PROMPTS_DIR / "steering.yaml") -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


@dataclass(frozen=True)
class Request:
    """One user message of ``kind`` asking for ``value`` (a category, brand, keyword tuple or price band)."""

    kind: str
    text: str
    value: Any = None

    def satisfied_by(self, item: Mapping[str, Any]) -> bool:
        """Whether a catalog row is what the request asks for."""
        if self.kind in ("category", "exclude_category"):
            return (self.value in item["categories"]) == (self.kind == "category")
        if self.kind in ("brand", "exclude_brand"):  # any spelling case of the brand, as the parser matches it
            return ((item["brand"] or "").casefold() == self.value.casefold()) == (self.kind == "brand")
        if self.kind == "price":
            return item["price"] is not None and self.value[0] <= item["price"] <= self.value[1]
        if self.kind == "keywords":
            text = f"{item['title']} {item['description']}".lower()
            return all(re.search(rf"\b{re.escape(w)}\b", text) for w in self.value)
        return True


class SteeringRequests:
    """Target-derived requests over one catalog, phrased by ``phrasings`` (training) or ``held_out`` (eval);
    ``popularity`` (training interactions per item id) weights the other items of ``items_example``."""

    def __init__(self, items: Sequence[Mapping[str, Any]], seed: int = 0, phrasings: str = "phrasings",
                 popularity: Mapping[str, int] | None = None):
        self.cfg = steering_templates()
        self.phrasings = self.cfg[phrasings]
        self.vocab = Vocabulary(items)
        share = Counter(c for it in items for c in set(it["categories"]))
        self.informative = {c for c, n in share.items() if n <= self.cfg["broad_category_share"] * len(items)}
        self.brands = sorted({it["brand"] for it in items if it["brand"]})
        self.categories = sorted(self.informative)
        self.stopwords = set(self.cfg["stopwords"])
        self.members: dict[tuple[str, str], list[str]] = defaultdict(list)  # (kind, value) -> item ids
        for it in items:
            for c in set(it["categories"]) & self.informative:
                self.members["category", c].append(it["item_id"])
            if it["brand"]:
                self.members["brand", it["brand"]].append(it["item_id"])
        self.popularity = popularity or {}
        self.rng = random.Random(seed)
        self.turns = Counter()  # phrasing rotation per kind

    def phrase(self, kind: str, **fields: Any) -> str:
        options = self.phrasings[kind]
        self.turns[kind] += 1
        return options[self.turns[kind] % len(options)].format(**fields)

    def keywords(self, item: Mapping[str, Any]) -> tuple[str, ...] | None:
        """Two content words of the title (one when it has only two), else of the description; None if none."""
        brand = set(_WORD.findall((item["brand"] or "").lower()))
        for text, keep_one_out in ((item["title"], True), (item["description"], False)):
            words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text or "")))
            words = [w for w in words if w not in self.stopwords and w not in brand]
            n = min(2, len(words) - 1 if keep_one_out else len(words))
            if n > 0:
                return tuple(self.rng.sample(words, n))
        return None

    def request(self, kind: str, item: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> Request | None:
        """A ``kind`` request ``item`` satisfies (exclusions prefer the history's attributes); None if impossible."""
        rng = self.rng
        if kind == "neutral":
            return Request(kind, self.phrase(kind))
        if kind == "category":
            cats = [c for c in item["categories"] if c in self.informative]
            value = rng.choice(cats) if cats else None
            return Request(kind, self.phrase(kind, category=value), value) if value else None
        if kind == "brand":
            return Request(kind, self.phrase(kind, brand=item["brand"]), item["brand"]) if item["brand"] else None
        if kind == "price":
            if item["price"] is None:
                return None
            p = item["price"]
            low, high = math.floor(0.8 * p), math.ceil(1.25 * p)
            return Request(kind, self.phrase(kind, low=low, high=high, price=p), (low, high))
        if kind == "keywords":
            words = self.keywords(item)
            return Request(kind, self.phrase(kind, keywords=" ".join(words)), words) if words else None
        if kind == "exclude_brand":
            seen = sorted({it["brand"] for it in history if it["brand"] and it["brand"] != item["brand"]})
            pool = seen or [b for b in rng.sample(self.brands, min(5, len(self.brands))) if b != item["brand"]]
            value = rng.choice(pool) if pool else None
            return Request(kind, self.phrase(kind, brand=value), value) if value else None
        if kind == "exclude_category":
            own = set(item["categories"])
            seen = sorted({c for it in history for c in it["categories"] if c in self.informative and c not in own})
            pool = seen or [c for c in rng.sample(self.categories, min(5, len(self.categories))) if c not in own]
            value = rng.choice(pool) if pool else None
            return Request(kind, self.phrase(kind, category=value), value) if value else None
        raise ValueError(f"unknown steering request kind {kind!r}; known: {KINDS}")

    def constraints(self, texts: Sequence[str]) -> Constraints:
        """What the serving parser makes of these user messages, accumulated over the turns."""
        out = Constraints()
        for text in texts:
            out.update(parse(text, self.vocab))
        return out

    def dialogue(self, item: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> list[Request] | None:
        """One or two requests ``item`` satisfies whose parsed constraints allow it; None when none fits."""
        weights = self.cfg["kind_weights"]
        kinds = list(weights)
        for _ in range(4):
            last = self.request(self.rng.choices(kinds, [weights[k] for k in kinds])[0], item, history)
            if last is None:
                continue
            turns = [last]
            if last.kind not in self.cfg["first_turn"] and self.rng.random() < self.cfg["two_turn"]:
                first = self.request(self.rng.choice(self.cfg["first_turn"]), item, history)
                turns = [first, last] if first else turns
            if self.constraints([r.text for r in turns]).allows(item):
                return turns
        return None


def steering_example(history: Sequence[str], target: str, catalog: Items, codebook: SIDCodebook,
                     requests: SteeringRequests) -> dict[str, Any] | None:
    """The chat prompt with a target-derived dialogue -> the target's SID (None: target in history, or no request)."""
    if target in history:
        return None
    turns = requests.dialogue(catalog[target], [catalog[i] for i in history])
    if turns is None:
        return None
    texts = [r.text for r in turns]
    return chat_example(history, texts, requests.constraints(texts).describe(), target, catalog, codebook)


def items_example(history: Sequence[str], target: str, kind: str, catalog: Items, codebook: SIDCodebook,
                  requests: SteeringRequests) -> dict[str, Any] | None:
    """The chat prompt with a request for the target's ``kind`` ("category" or "brand") -> the SIDs of the target and
    up to ``items_answer.max_items - 1`` other items satisfying it (none from the history; drawn with weight 1 +
    popularity), the target first unless ``items_answer.order`` is ``shuffled`` (None: target in history, or no such
    request)."""
    if target in history:
        return None
    request = requests.request(kind, catalog[target])
    if request is None:
        return None
    rules = requests.constraints([request.text])
    if not rules.allows(catalog[target]):
        return None
    cfg, rng = requests.cfg["items_answer"], requests.rng
    pool = [i for i in requests.members[kind, request.value]
            if i != target and i not in history and rules.allows(catalog[i])]
    # weighted sampling without replacement (Efraimidis-Spirakis keys)
    others = sorted(pool, key=lambda i: rng.random() ** (1 / (1 + requests.popularity.get(i, 0))), reverse=True)
    answer = [target, *others[: cfg["max_items"] - 1]]
    if cfg["order"] == "shuffled":
        rng.shuffle(answer)
    elif cfg["order"] != "target_first":
        raise ValueError(f"prompts/steering.yaml items_answer.order: target_first or shuffled, got {cfg['order']!r}")
    ex = chat_example(history, [request.text], rules.describe(), None, catalog, codebook)
    ex["messages"].append({"role": "assistant", "content": [
        {"type": "text", "text": cfg["separator"].join(codebook.sid_string(i) for i in answer)}]})
    return ex
