"""Steering: the user's words -> hard constraints (enforced in the trie) plus free-text preferences.

Parsed against the catalog's own vocabulary (brands, category names, prices). Per clause (split on
punctuation, "and", "but"): a brand or category mentioned under a negation ("not", "no", "without",
"except", "avoid", ...) is excluded, otherwise it becomes an include filter ("puzzles from Aria");
"that brand" means the brand of the last top recommendation; "under $20" sets a price ceiling and a
bare "cheaper" means below the median price of the last recommendations.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

_NEGATION = re.compile(r"\b(not|no|without|except|exclude|excluding|avoid|never|don'?t|nothing|other than|"
                       r"anything but|none|skip|drop)\b", re.I)
_CEILING = re.compile(r"\b(?:under|below|less than|cheaper than|at most|max(?:imum)?|up to|within)\s*\$?\s*"
                      r"(\d+(?:\.\d+)?)|<\s*\$?\s*(\d+(?:\.\d+)?)", re.I)
_CHEAPER = re.compile(r"\b(cheaper|less expensive|lower price[sd]?|more affordable|budget)\b", re.I)
_THAT_BRAND = re.compile(r"\b(that|this|the same) brand\b", re.I)
_THOSE_BRANDS = re.compile(r"\b(those|these|the same) brands\b", re.I)
_CLAUSES = re.compile(r"[,.;!?\n]+|\band\b|(?<!anything )(?<!everything )\bbut\b", re.I)


@dataclass
class Constraints:
    """Hard filters on items; empty include sets mean "any"."""

    exclude_brands: set[str] = field(default_factory=set)
    exclude_categories: set[str] = field(default_factory=set)
    include_brands: set[str] = field(default_factory=set)
    include_categories: set[str] = field(default_factory=set)
    max_price: float | None = None

    def allows(self, item: Mapping[str, Any]) -> bool:
        """Whether a catalog row satisfies every constraint (an unknown price fails a ceiling)."""
        cats = set(item["categories"])
        if item["brand"] in self.exclude_brands or cats & self.exclude_categories:
            return False
        if self.include_brands and item["brand"] not in self.include_brands:
            return False
        if self.include_categories and not cats & self.include_categories:
            return False
        return self.max_price is None or (item["price"] is not None and item["price"] <= self.max_price)

    def update(self, new: "Constraints") -> None:
        """Fold a later turn in: exclusions add up, a new include or ceiling replaces the old one."""
        self.exclude_brands |= new.exclude_brands
        self.exclude_categories |= new.exclude_categories
        self.include_brands = (new.include_brands or self.include_brands) - self.exclude_brands
        self.include_categories = (new.include_categories or self.include_categories) - self.exclude_categories
        if new.max_price is not None:
            self.max_price = new.max_price

    def describe(self) -> list[str]:
        """Human-readable clauses, e.g. ``["not by Aria", "under $20.00"]``."""
        out = []
        if self.include_categories:
            out.append("in " + " or ".join(sorted(self.include_categories)))
        if self.include_brands:
            out.append("by " + " or ".join(sorted(self.include_brands)))
        out += [f"not by {b}" for b in sorted(self.exclude_brands)]
        out += [f"no {c}" for c in sorted(self.exclude_categories)]
        if self.max_price is not None:
            out.append(f"under ${self.max_price:.2f}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"exclude_brands": sorted(self.exclude_brands), "exclude_categories": sorted(self.exclude_categories),
                "include_brands": sorted(self.include_brands),
                "include_categories": sorted(self.include_categories), "max_price": self.max_price}


class Vocabulary:
    """The catalog's brands and category names, matched case-insensitively on word boundaries."""

    def __init__(self, items: Iterable[Mapping[str, Any]]):
        self.brands: dict[str, str] = {}
        self.categories: dict[str, str] = {}
        for it in items:
            if it["brand"]:
                self.brands[it["brand"].lower()] = it["brand"]
            for c in it["categories"]:
                self.categories[c.lower()] = c
        self._brand_re = self._pattern(self.brands)
        self._cat_re = self._pattern(self.categories, plural=True)

    @staticmethod
    def _pattern(names: Mapping[str, str], plural: bool = False) -> re.Pattern | None:
        if not names:
            return None
        alts = []
        for n in sorted(names, key=len, reverse=True):
            stem = re.escape(n[:-1] if plural and n.endswith("s") else n)
            alts.append(stem + (r"(?:s|es)?" if plural else ""))
        return re.compile(r"\b(" + "|".join(alts) + r")\b", re.I)

    def _find(self, pattern: re.Pattern | None, names: Mapping[str, str], text: str, plural: bool) -> set[str]:
        found = set()
        for m in (pattern.finditer(text) if pattern else ()):
            word = m.group(1).lower()
            for cand in (word, word + "s", word[:-1], word[:-2]) if plural else (word,):
                if cand in names:
                    found.add(names[cand])
                    break
        return found

    def brands_in(self, text: str) -> set[str]:
        return self._find(self._brand_re, self.brands, text, plural=False)

    def categories_in(self, text: str) -> set[str]:
        return self._find(self._cat_re, self.categories, text, plural=True)


def parse(text: str, vocab: Vocabulary, last_items: Sequence[Mapping[str, Any]] = ()) -> Constraints:
    """The hard constraints one user message asks for (see the module docstring)."""
    c = Constraints()
    for clause in _CLAUSES.split(text):
        if not clause.strip():
            continue
        negated = bool(_NEGATION.search(clause))
        brands, cats = vocab.brands_in(clause), vocab.categories_in(clause)
        if last_items and _THOSE_BRANDS.search(clause):
            brands |= {it["brand"] for it in last_items if it["brand"]}
        elif last_items and _THAT_BRAND.search(clause) and last_items[0]["brand"]:
            brands.add(last_items[0]["brand"])
        (c.exclude_brands if negated else c.include_brands).update(brands)
        (c.exclude_categories if negated else c.include_categories).update(cats)
    ceilings = [float(a or b) for a, b in _CEILING.findall(text)]
    if ceilings:
        c.max_price = min(ceilings)
    elif _CHEAPER.search(text):
        prices = [it["price"] for it in last_items if it["price"] is not None]
        if prices:
            c.max_price = round(statistics.median(prices) - 0.01, 2)
    return c
