"""Steering: the user's words -> hard constraints (enforced in the trie) plus free-text preferences.

Parsed against the catalog's own vocabulary (brands, category names, prices). Per clause (split on
punctuation, "and", "but", never inside a catalog name such as "C. B. Gitty"): a brand or category mentioned
under a negation ("not", "no", "without", "except", "avoid", ...) is excluded, otherwise it becomes an include
filter ("puzzles from Aria");
"that brand" means the brand of the last top recommendation; "under $20" sets a price ceiling and a
bare "cheaper" means below the median price of the last recommendations.

Every clause is also reported back (``Clause``): ``applied`` (a constraint the trie enforces), ``ignored`` with
the reason (e.g. "cheaper" on a catalog without prices) or ``preference`` (words that match no rule and reach
the model only through the prompt). The parser is shared by serving (``serve/conversation.py``, which also
words the answer) and the steering training data (``finetune/steering_data.py``), so both see the same constraints.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

_NEGATION = re.compile(r"\b(not|no|without|except|exclude|excluding|avoid|never|don'?t|nothing|other than|"
                       r"anything but|none|skip|drop)\b", re.I)
_CEILING = re.compile(r"\b(?:under|below|less than|cheaper than|at most|max(?:imum)?|up to|within)\s*\$?\s*"
                      r"(\d+(?:\.\d+)?)|<\s*\$?\s*(\d+(?:\.\d+)?)", re.I)
_CHEAPER = re.compile(r"\b(cheaper|less expensive|lower price[sd]?|more affordable|budget)\b", re.I)
_THAT_BRAND = re.compile(r"\b(that|this|the same) brand\b", re.I)
_THOSE_BRANDS = re.compile(r"\b(those|these|the same) brands\b", re.I)
_BRAND_WORD = re.compile(r"\bbrands?\b", re.I)
_CLAUSES = re.compile(r"(?:(?<!\d)[,.]|[,.](?!\d)|[;!?\n])+|\band\b|(?<!anything )(?<!everything )\bbut\b", re.I)


@dataclass
class Constraints:
    """Hard filters on items; empty include sets mean "any"."""

    exclude_brands: set[str] = field(default_factory=set)
    exclude_categories: set[str] = field(default_factory=set)
    include_brands: set[str] = field(default_factory=set)
    include_categories: set[str] = field(default_factory=set)
    max_price: float | None = None

    def allows(self, item: Mapping[str, Any]) -> bool:
        """Whether a catalog row satisfies every constraint (an unknown price fails a ceiling). Brands match
        whatever their case: catalogs spell one brand several ways ("Shark", "SHARK")."""
        cats, brand = set(item["categories"]), (item["brand"] or "").casefold()
        if brand in {b.casefold() for b in self.exclude_brands} or cats & self.exclude_categories:
            return False
        if self.include_brands and brand not in {b.casefold() for b in self.include_brands}:
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

    def labelled(self) -> list[tuple[str, str, Any]]:
        """``(label, field, value)`` per constraint, e.g. ``("not by Aria", "exclude_brands", "Aria")``; the
        include sets are one label each ("in Toys or Pens"), their value ``None``."""
        out: list[tuple[str, str, Any]] = []
        if self.include_categories:
            out.append(("in " + " or ".join(sorted(self.include_categories)), "include_categories", None))
        if self.include_brands:
            out.append(("by " + " or ".join(sorted(self.include_brands)), "include_brands", None))
        out += [(f"not by {b}", "exclude_brands", b) for b in sorted(self.exclude_brands)]
        out += [(f"no {c}", "exclude_categories", c) for c in sorted(self.exclude_categories)]
        if self.max_price is not None:
            out.append((f"under ${self.max_price:.2f}", "max_price", None))
        return out

    def describe(self) -> list[str]:
        """Human-readable constraints, e.g. ``["not by Aria", "under $20.00"]``."""
        return [label for label, _, _ in self.labelled()]

    def remove(self, label: str) -> bool:
        """Drop the constraint ``describe()`` calls ``label``; False when no active constraint has that label."""
        for name, key, value in self.labelled():
            if name == label:
                if key == "max_price":
                    self.max_price = None
                elif value is None:
                    getattr(self, key).clear()
                else:
                    getattr(self, key).discard(value)
                return True
        return False

    def as_dict(self) -> dict[str, Any]:
        return {"exclude_brands": sorted(self.exclude_brands), "exclude_categories": sorted(self.exclude_categories),
                "include_brands": sorted(self.include_brands),
                "include_categories": sorted(self.include_categories), "max_price": self.max_price}


class Vocabulary:
    """The catalog's brands and category names, matched case-insensitively on word boundaries."""

    def __init__(self, items: Iterable[Mapping[str, Any]]):
        self.brands: dict[str, str] = {}
        self.categories: dict[str, str] = {}
        self.has_prices = False
        for it in items:
            self.has_prices = self.has_prices or it["price"] is not None
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
        # (?<!\w)/(?!\w) rather than \b: names may start or end with punctuation ("BAMtack!", "Co., Inc.")
        return re.compile(r"(?<!\w)(" + "|".join(alts) + r")(?!\w)", re.I)

    def _find(self, pattern: re.Pattern | None, names: Mapping[str, str], text: str, plural: bool) -> set[str]:
        found = set()
        for m in (pattern.finditer(text) if pattern else ()):
            word = m.group(1).lower()
            for cand in (word, word + "s", word[:-1], word[:-2]) if plural else (word,):
                if cand in names:
                    found.add(names[cand])
                    break
        return found

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where ``text`` names a brand or category: clause splitting never cuts inside one ("C. B. Gitty")."""
        return [m.span() for p in (self._brand_re, self._cat_re) if p for m in p.finditer(text)]

    def brands_in(self, text: str) -> set[str]:
        return self._find(self._brand_re, self.brands, text, plural=False)

    def categories_in(self, text: str) -> set[str]:
        return self._find(self._cat_re, self.categories, text, plural=True)


@dataclass
class Clause:
    """What became of one clause of the user's words (``constraint``: the label of an applied constraint)."""

    clause: str
    status: Literal["applied", "ignored", "preference", "removed"]
    reason: str | None = None
    constraint: str | None = None


def parse(text: str, vocab: Vocabulary, last_items: Sequence[Mapping[str, Any]] = ()) -> Constraints:
    """The hard constraints one user message asks for (see the module docstring)."""
    return parse_clauses(text, vocab, last_items)[0]


def parse_clauses(text: str, vocab: Vocabulary,
                  last_items: Sequence[Mapping[str, Any]] = ()) -> tuple[Constraints, list[Clause]]:
    """The hard constraints one user message asks for, and what became of each of its clauses."""
    c, report = Constraints(), []
    explicit = bool(_CEILING.search(text))
    for clause in (s.strip() for s in _clauses(text, vocab)):
        if not clause:
            continue
        new, why = _clause(clause, vocab, last_items, explicit)
        for key in ("exclude_brands", "exclude_categories", "include_brands", "include_categories"):
            getattr(c, key).update(getattr(new, key))
        if new.max_price is not None:
            c.max_price = min(new.max_price, c.max_price if c.max_price is not None else new.max_price)
        labels = new.describe()
        report += [Clause(clause, "applied", constraint=label) for label in labels]
        if why:
            report.append(Clause(clause, "ignored", reason=why))
        elif not labels:
            report.append(Clause(clause, "preference", reason="not a rule: passed to the model in the prompt"))
    return c, report


def _clauses(text: str, vocab: Vocabulary) -> list[str]:
    """``text`` split at punctuation, "and" and "but", except inside a catalog name."""
    names, out, start = vocab.spans(text), [], 0
    for m in _CLAUSES.finditer(text):
        if not any(a < m.end() and m.start() < b for a, b in names):
            out.append(text[start:m.start()])
            start = m.end()
    return [*out, text[start:]]


def _clause(clause: str, vocab: Vocabulary, last_items: Sequence[Mapping[str, Any]],
            explicit_ceiling: bool) -> tuple[Constraints, str | None]:
    """One clause's constraints, and why a rule it asks for cannot be applied (``None``: nothing ignored);
    "cheaper" adds nothing when the message names a ceiling (``explicit_ceiling``)."""
    c, why = Constraints(), None
    negated = bool(_NEGATION.search(clause))
    brands, cats = vocab.brands_in(clause), vocab.categories_in(clause)
    if _THOSE_BRANDS.search(clause) or _THAT_BRAND.search(clause):
        named = [it["brand"] for it in last_items[:None if _THOSE_BRANDS.search(clause) else 1] if it["brand"]]
        brands |= set(named)
        if not named:
            why = "this catalog has no brands" if not vocab.brands else "no earlier recommendation has a brand"
    elif _BRAND_WORD.search(clause) and not vocab.brands and not brands:
        why = "this catalog has no brands"
    (c.exclude_brands if negated else c.include_brands).update(brands)
    (c.exclude_categories if negated else c.include_categories).update(cats)
    own = [float(a or b) for a, b in _CEILING.findall(clause)]
    if own or (_CHEAPER.search(clause) and not explicit_ceiling):
        prices = [it["price"] for it in last_items if it["price"] is not None]
        if not vocab.has_prices:
            why = "this catalog has no prices"
        elif own:
            c.max_price = min(own)
        elif prices:
            c.max_price = round(statistics.median(prices) - 0.01, 2)
        else:
            why = "no earlier recommendation has a price to compare with"
    return c, why
