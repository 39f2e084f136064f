"""Steering parser and constraints (no model), and the transformers backend behind the same interface."""
from __future__ import annotations

import asyncio

import pytest

from think_rec.steering import Clause, Constraints, Vocabulary, parse, parse_clauses

ITEMS = [
    {"item_id": "a", "brand": "Aria", "categories": ["Toys", "Puzzles"], "price": 54.0},
    {"item_id": "b", "brand": "Norex", "categories": ["Toys", "Plush"], "price": 20.0},
    {"item_id": "c", "brand": "Norex", "categories": ["Office", "Pens"], "price": 4.5},
    {"item_id": "d", "brand": "", "categories": ["Office", "Notebooks"], "price": None},
]
VOCAB = Vocabulary(ITEMS)


@pytest.mark.parametrize("text, expected", [
    ("not from Aria", {"exclude_brands": ["Aria"]}),
    ("a puzzle from aria", {"include_brands": ["Aria"], "include_categories": ["Puzzles"]}),
    ("no pens, but some notebooks under $12.50", {"exclude_categories": ["Pens"],
                                                  "include_categories": ["Notebooks"], "max_price": 12.5}),
    ("cheaper, and not from that brand", {"exclude_brands": ["Aria"], "max_price": 36.99}),
    ("anything but those brands", {"exclude_brands": ["Aria", "Norex"]}),
    ("I do 3D printing, what filament next?", {}),
])
def test_parse(text, expected):
    got = parse(text, VOCAB, last_items=ITEMS[:2]).as_dict()
    assert got == {**Constraints().as_dict(), **expected}


def test_constraints_accumulate_and_filter():
    c = Constraints()
    c.update(parse("show me Norex", VOCAB))
    assert [it["item_id"] for it in ITEMS if c.allows(it)] == ["b", "c"]
    c.update(parse("under 10 dollars, no Toys", VOCAB))
    assert [it["item_id"] for it in ITEMS if c.allows(it)] == ["c"]  # unknown price fails a ceiling
    c.update(parse("not Norex either", VOCAB))
    assert c.include_brands == set() and not any(c.allows(it) for it in ITEMS)
    assert c.describe() == ["not by Norex", "no Toys", "under $10.00"]


def test_brands_match_whatever_their_case():
    items = [*ITEMS, {"item_id": "e", "brand": "NOREX", "categories": ["Toys"], "price": 9.0}]
    vocab = Vocabulary(items)  # keeps one spelling; the catalog has two
    assert [it["item_id"] for it in items if parse("nothing from Norex", vocab).allows(it)] == ["a", "d"]
    assert [it["item_id"] for it in items if parse("Norex please", vocab).allows(it)] == ["b", "c", "e"]


@pytest.mark.parametrize("brand", ["Chenango Supply Co., Inc.", "Chenango Supply", "BAMtack!", "C. B. Gitty"])
def test_names_with_punctuation_stay_whole(brand):
    """Scientific's brands: clauses split at punctuation, never inside a name (nor match a shorter brand)."""
    names = ["Chenango Supply Co., Inc.", "Chenango Supply", "BAMtack!", "C. B. Gitty"]
    vocab = Vocabulary([*ITEMS, *({"item_id": n, "brand": n, "categories": ["Tools"], "price": 1.0} for n in names)])
    got = parse(f"nothing from {brand}, and show me pens", vocab).as_dict()
    assert got == {**Constraints().as_dict(), "exclude_brands": [brand], "include_categories": ["Pens"]}


FILMS = Vocabulary([{"item_id": "m", "brand": "", "categories": ["Comedy", "Sci-Fi"], "price": None}])
PREFERENCE = "not a rule: passed to the model in the prompt"


@pytest.mark.parametrize("text, vocab, expected", [
    ("cheaper, and no sci-fi. Something funny please", FILMS,
     [Clause("cheaper", "ignored", reason="this catalog has no prices"),
      Clause("no sci-fi", "applied", constraint="no Sci-Fi"),
      Clause("Something funny please", "preference", reason=PREFERENCE)]),
    ("same brand as before, under $5", FILMS,
     [Clause("same brand as before", "ignored", reason="this catalog has no brands"),
      Clause("under $5", "ignored", reason="this catalog has no prices")]),
    ("not from Aria but a plush under $12.50", VOCAB,
     [Clause("not from Aria", "applied", constraint="not by Aria"),
      Clause("a plush under $12.50", "applied", constraint="in Plush"),
      Clause("a plush under $12.50", "applied", constraint="under $12.50")]),
    ("cheaper, from that brand", VOCAB,  # no earlier recommendation to compare with
     [Clause("cheaper", "ignored", reason="no earlier recommendation has a price to compare with"),
      Clause("from that brand", "ignored", reason="no earlier recommendation has a brand")]),
])
def test_every_clause_is_explained(text, vocab, expected):
    constraints, clauses = parse_clauses(text, vocab)
    assert clauses == expected
    assert sorted(c.constraint for c in clauses if c.status == "applied") == sorted(constraints.describe())


def test_constraints_are_removed_by_label():
    c = parse("puzzles or plush, not Norex, under $30", VOCAB)
    assert c.describe() == ["in Plush or Puzzles", "not by Norex", "under $30.00"]
    assert c.remove("not by Norex") and c.remove("in Plush or Puzzles") and not c.remove("not by Aria")
    assert c.describe() == ["under $30.00"] and c.remove("under $30.00") and c == Constraints()


def test_hf_backend_same_interface(aligned_run):
    """``--backend hf``: constrained items from the catalog, none of the banned ones, rationale when asked."""
    from think_rec.data.schema import RecDataset
    from think_rec.finetune.rationale_filters import complete
    from think_rec.serve.conversation import Conversation, Session
    from think_rec.serve.engine import EngineConfig, run
    from think_rec.serve.engines import build_engine

    dirs, codebook, model_dir = aligned_run
    ds = RecDataset.load(dirs.data)
    engine = build_engine("hf", EngineConfig(model_dir, dirs.sids))
    asyncio.run(engine.start())
    conv = Conversation(ds, codebook, engine.processor)
    session = Session("s")
    session.history = ds.interactions.sequences[0][:5]
    conv.add_user_message(session, "nothing from Aria please")
    banned = conv.banned(session)
    rec = asyncio.run(run(engine, conv.prompt(session), k=6, banned=banned))
    assert len(rec.items) == 6 and not {i for i, _ in rec.items} & banned and rec.rationale == ""
    assert all(i in ds.catalog and ds.catalog[i]["brand"] != "Aria" for i, _ in rec.items)
    thought = asyncio.run(run(engine, conv.prompt(session), k=3, banned=banned, think=True, max_think_tokens=5))
    assert len(thought.items) == 3  # a stage-1 model ends no sentence in 5 tokens: the rationale is closed empty
    assert thought.rationale == "" or complete(thought.rationale)
