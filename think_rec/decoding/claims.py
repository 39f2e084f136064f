"""What a rationale claims about the next item, and whether catalog items satisfy it.

``rationale_claims`` reads every brand and category a rationale names outside its citations, the words it says the
item is "about", its price band against what the user usually pays, a film's decade ("from the 1990s": its
release year), and "like <cited item>" when a sentence names nothing else; and why it contradicts itself (two
brands, two price bands, two decades, categories no one catalog item carries together, a brand, a decade,
categories or "about" words attributed to a cited item that carries none of them). ``faithful``: every claim
holds for an item.

``ClaimChecker`` is what the think step uses so that the answer follows its reasoning: ``follow`` adds
``weight`` x the share of the claims an item satisfies to its served score (the weight chosen on valid users when
stage 2 ends, ``served.json`` ``follow_weight``); of several rationales drawn for a request (``rationale_samples``)
``choose`` keeps one that does not contradict itself and that its first item satisfies (a rationale the items
cannot satisfy is re-sampled), and ``shorten`` keeps the sentences whose claims hold for the top item, so a page
never shows a claim its first item contradicts.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from think_rec.finetune.rationale_filters import citation_title, content_tokens, mentions
from think_rec.finetune.rationales import common_prefix, price_band, release_decade, usual_price
from think_rec.steering import Vocabulary

Item = dict[str, Any]
QUOTED = re.compile(r'"([^"]*)"')
ABOUT = re.compile(r"\babout\s+(.+?)\s*(?:,|[.!?;]|$)", re.I)
DECADE = re.compile(r"\bfrom the (\d{3}0)s\b", re.I)
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
    decades: set[int] = field(default_factory=set)
    like: list[Item] = field(default_factory=list)
    usual_price: float | None = None
    contradictions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.categories) + len(self.brands) + len(self.words) + len(self.prices) + len(self.decades)
                + len(self.like))


def _sentences(text: str, titles: Iterable[str] = ()) -> list[tuple[str, str, list[str]]]:
    """Per sentence: its text, its text with quoted titles blanked, and the quoted titles. ``titles`` (the history's
    citation titles) are found whole first, so an inch mark inside one (``Crystal 6" Prism``) does not end its quote."""
    quotes: list[str] = []

    def hide(m: re.Match) -> str:
        quotes.append(m.group(1))
        return f"\x00{len(quotes) - 1}\x00"

    text = text or ""
    for title in sorted({t for t in titles if '"' in t}, key=len, reverse=True):
        text = re.sub(f'"({re.escape(title)})"', hide, text)
    out = []
    for sentence in re.split(r"(?<=[.!?])[\"')\]]*\s+", QUOTED.sub(hide, text)):
        refs = [quotes[int(i)] for i in re.findall(r"\x00(\d+)\x00", sentence)]
        original = re.sub(r"\x00(\d+)\x00", lambda m: f'"{quotes[int(m.group(1))]}"', sentence)
        out.append((original, re.sub(r"\x00\d+\x00", " ", sentence), refs))
    return out


def _names(vocab: ClaimVocabulary, plain: str) -> tuple[set[str], set[str]]:
    """The brands and categories ``plain`` names, longest names first: a name inside a longer one ("3D" in
    "3D Printing Supplies", "Valves" in "Dixon Valve & Coupling", "Tape" in "Tapes") is not named on its own."""
    finders = {"brand": vocab.brands_in, "category": vocab.categories_in}
    found = sorted(((name, kind) for kind, find in finders.items() for name in find(plain)), key=lambda f: -len(f[0]))
    rest, names = plain, {"brand": set(), "category": set()}
    for name, kind in found:
        if name in finders[kind](rest):
            names[kind].add(name)
            rest = re.sub(re.escape(name), " ", rest, flags=re.I)
    return names["brand"], names["category"]


def _sentence_claims(claims: Claims, plain: str, cited: Sequence[Item], vocab: ClaimVocabulary) -> None:
    """Add one sentence's claims (``plain``: its text without citations; ``cited``: the items it cites)."""
    words: set[str] = set()
    if about := ABOUT.search(plain):
        words = set(content_tokens(about.group(1)))
        claims.words |= words
        plain = plain[:about.start()] + plain[about.end():]
    prices = {band for band, pattern in PRICE_CLAIMS.items() if pattern.search(plain)}
    decades = {int(d) for d in DECADE.findall(plain)}
    brands, cats = _names(vocab, plain)
    claims.prices |= prices
    claims.decades |= decades
    claims.brands |= brands
    claims.categories |= cats
    for names, carried in ((brands, lambda it: [it.get("brand") or ""]), (cats, lambda it: it.get("categories") or []),
                           ({f"{d}s" for d in decades}, lambda it: [f"{d}s" for d in [release_decade(it)] if d]),
                           (words, lambda it: content_tokens(it.get("title", "")))):
        wanted = {name.casefold() for name in names}
        for item in cited if names else ():  # a cited item must carry one of the names its sentence claims
            if not wanted & {c.casefold() for c in carried(item)}:
                claims.contradictions.append(f'{"/".join(sorted(names))} attributed to "{citation_title(item)}"')
    if not (about or prices or decades or brands or cats) and LIKE.search(plain):
        claims.like += cited


def rationale_claims(text: str, vocab: ClaimVocabulary, history: Sequence[Item]) -> Claims:
    """The claims ``text`` makes about the next item (see the module docstring); ``history``: the items it may
    cite, whose prices are what the user usually pays."""
    claims = Claims(usual_price=usual_price(history))
    for _, plain, quoted in _sentences(text, (citation_title(h) for h in history)):
        keys = {q.casefold() for q in quoted}
        cited = [h for h in history if citation_title(h)
                 and (citation_title(h).casefold() in keys or mentions(plain, citation_title(h)))]
        for item in cited:
            plain = re.sub(re.escape(citation_title(item)), " ", plain, flags=re.I)
        _sentence_claims(claims, plain, cited, vocab)
    if len({b.casefold() for b in claims.brands}) > 1:
        claims.contradictions.append("brands " + ", ".join(sorted(claims.brands)))
    if len(claims.decades) > 1:
        claims.contradictions.append("decades " + ", ".join(f"{d}s" for d in sorted(claims.decades)))
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


def _checks(claims: Claims, item: Item) -> list[bool]:
    """Whether each claim holds for ``item`` (an unknown price holds no price band)."""
    cats = {c.casefold() for c in item.get("categories") or []}
    brand = (item.get("brand") or "").casefold()
    price = item.get("price")
    band = price_band(price, claims.usual_price) if price and claims.usual_price else None
    title = set(content_tokens(item.get("title", "")))
    return [*(c.casefold() in cats for c in claims.categories), *(b.casefold() == brand for b in claims.brands),
            *(w in title for w in claims.words), *(p == band for p in claims.prices),
            *(d == release_decade(item) for d in claims.decades),
            *(_alike(c, item) for c in claims.like)]


def faithful(claims: Claims, item: Item) -> bool:
    """Every claim holds for ``item``; vacuously true without claims."""
    return all(_checks(claims, item))


def holding(claims: Claims, item: Item) -> float:
    """The share of the claims that hold for ``item`` (1 without claims)."""
    checks = _checks(claims, item)
    return sum(checks) / len(checks) if checks else 1.0


class ClaimChecker:
    """A catalog's claims machinery: what a rationale claims, a ranking that follows it, a rationale shortened to
    what holds for an item. ``items``: ``item_id -> catalog row``; histories are item ids."""

    def __init__(self, items: Mapping[str, Item], cache_size: int = 65536):
        self.items = items
        self.vocab = ClaimVocabulary(items.values())
        self._claims = functools.lru_cache(maxsize=cache_size)(self._read)  # a rationale is read once per history

    def _read(self, text: str, history: tuple[str, ...]) -> Claims:
        return rationale_claims(text, self.vocab, [self.items[i] for i in history])

    def claims(self, text: str, history: Sequence[str]) -> Claims:
        """What ``text`` claims about the next item after ``history`` (``rationale_claims``; not to be modified)."""
        return self._claims(text, tuple(history))

    def follow(self, ranked: Sequence[tuple[str, float]], claims: Claims, weight: float,
               k: int) -> list[tuple[str, float]]:
        """``ranked`` re-scored by ``weight`` x the share of ``claims`` each item satisfies (``holding``); top ``k``."""
        if not weight or not len(claims):
            return list(ranked)[:k]
        scored = [(i, s + weight * holding(claims, self.items[i])) for i, s in ranked]
        return sorted(scored, key=lambda x: -x[1])[:k]

    def shorten(self, text: str, history: Sequence[str], item: str | None) -> str:
        """The sentences of ``text`` whose claims all hold for ``item`` and do not contradict themselves (all of
        ``text`` when there is no item): what is shown above a ranking whose top item is ``item``."""
        if item is None:
            return text
        kept = []
        for original, _, _ in _sentences(text, (citation_title(self.items[i]) for i in history)):
            claims = self.claims(original, history)
            if faithful(claims, self.items[item]) and not claims.contradictions:
                kept.append(original)
        return " ".join(s.strip() for s in kept if s.strip())

    def choose(self, rationales: Sequence[str], history: Sequence[str], ranked: Sequence[tuple[str, float]],
               weight: float, k: int) -> tuple[int, list[tuple[str, float]]]:
        """Of a request's rationales (the greedy one first), the one to show and the top ``k`` of ``ranked`` following
        it (``follow``): the first that does not contradict itself and whose claims (some, else none) all hold for
        its first item; else the first that does not contradict itself; else the first."""
        best: tuple[tuple[bool, bool, bool, int], int, list[tuple[str, float]]] | None = None
        for n, text in enumerate(rationales or [""]):
            claims = self.claims(text, history)
            items = self.follow(ranked, claims, weight, k)
            holds = bool(items) and faithful(claims, self.items[items[0][0]])
            key = (not claims.contradictions, holds, len(claims) > 0, -n)
            if best is None or key > best[0]:
                best = (key, n, items)
        return best[1], best[2]

    def answer(self, rationales: Sequence[str], history: Sequence[str], ranked: Sequence[tuple[str, float]],
               weight: float, k: int) -> tuple[str, list[tuple[str, float]]]:
        """What a think step shows: the rationale ``choose`` picks, kept to what holds for the first of its items
        (``shorten``), and those items. Eval and the API both call it."""
        n, items = self.choose(rationales, history, ranked, weight, k)
        text = rationales[n] if rationales else ""
        return self.shorten(text, history, items[0][0] if items else None), items
