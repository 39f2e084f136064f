"""Think-Ahead (``serve.think_ahead``): the offline SQLite store and the online last-level path, on the
transformers engine with the stage-1 ``aligned_run`` model (one store and one engine per module)."""
from __future__ import annotations

import asyncio
import math
import shutil
import sqlite3

import pytest

from think_rec.data.schema import RecDataset
from think_rec.decoding.ranking import extra_items, fusion_weights
from think_rec.finetune.rationale_filters import complete
from think_rec.model.artefacts import ServedConfig
from think_rec.serve.conversation import Conversation, Session
from think_rec.serve.engine import EngineConfig, run
from think_rec.serve.engines import build_engine
from think_rec.serve.think_ahead import Thought, ThinkAheadStore, UserState, build_store

USERS = [f"u{i}" for i in range(6)]
BEAM = 8


@pytest.fixture(scope="module")
def store(aligned_run, tmp_path_factory):
    """A T=0 store (stage-1 model) for ``USERS``, built in two runs (the second resumes)."""
    dirs, _, model_dir = aligned_run
    path = tmp_path_factory.mktemp("think_ahead") / "store.sqlite"
    assert build_store(model_dir, dirs.data, dirs.sids, path, beam=BEAM, users=USERS[:4], progress=False) == 4
    assert build_store(model_dir, dirs.data, dirs.sids, path, beam=BEAM, users=USERS, progress=False) == 2
    return path


@pytest.fixture(scope="module")
def served(aligned_run, store):
    """``(engine, loop, conversation, dataset)``: a started think_ahead engine wrapping the hf engine."""
    dirs, codebook, model_dir = aligned_run
    loop = asyncio.new_event_loop()
    engine = build_engine("think_ahead", EngineConfig(model_dir, dirs.sids, think_ahead=store,
                                                      think_ahead_base="hf"))
    loop.run_until_complete(engine.start())
    ds = RecDataset.load(dirs.data)
    yield engine, loop, Conversation(ds, codebook, engine.tok), ds
    engine.shutdown()
    loop.close()


def _asked(served, history):
    """``(prompt, history)`` as the API builds them for ``history`` and one user message."""
    conv = served[2]
    session = Session("s", history=list(history))
    conv.add_user_message(session, "What should I get next?")
    return conv.prompt(session), session.history[-conv.max_history:]


def _ask(served, history, banned=frozenset(), k=5, think=False, engine=None):
    """``_asked``'s prompt run on ``engine`` (default: think_ahead)."""
    ta, loop, _, _ = served
    prompt, recent = _asked(served, history)
    return loop.run_until_complete(run(engine or ta, prompt, k=k, banned=set(banned), think=think, history=recent))


def _stored_prefixes(engine, user):
    return {tuple(p): s for t in engine.store.get(user).thoughts for p, s in t.prefixes}


def test_store_round_trips(store, aligned_run, tmp_path):
    from transformers import AutoTokenizer

    from think_rec.decoding.trie import SIDTrie

    dirs, codebook, model_dir = aligned_run
    ds = RecDataset.load(dirs.data)
    histories = dict(zip(ds.interactions.users, ds.interactions.sequences))
    trie = SIDTrie.from_codebook(codebook, AutoTokenizer.from_pretrained(str(model_dir)))
    s = ThinkAheadStore(store)
    assert len(s) == len(USERS) and s.users() == set(USERS) and not s.think
    assert s.meta["beam"] == BEAM and s.meta["levels"] == codebook.levels and s.meta["history"] == "full"
    assert s.meta["exclude_history"] is ServedConfig.load(model_dir).exclude_history
    for user in USERS:
        state = s.get(user)
        assert state.history == histories[user][-5:] and s.find(state.history).history == state.history
        (thought,) = state.thoughts
        assert thought.text == "" and thought.think_ids == []
        prefixes = [p for p, _ in thought.prefixes]
        scores = [sc for _, sc in thought.prefixes]
        assert len(prefixes) == BEAM and len({tuple(p) for p in prefixes}) == BEAM
        assert all(len(p) == codebook.levels and p[0] == trie.first_token for p in prefixes)  # <|sid_begin|> + L-1
        # trie nodes with last-level children, history items pruned as the API bans them (exclude_history)
        banned = trie.banned_counts(set(state.history) if s.meta["exclude_history"] else set())
        assert all(len(trie.allowed(p, banned)) > 0 for p in prefixes)
        assert scores == sorted(scores, reverse=True) and all(sc <= 0 for sc in scores)
    assert s.get("nobody") is None and s.find(["0", "1", "2"]) is None
    s.close()

    state = UserState("x", ["3", "1"], [Thought("cheap tools", [11, 12], [([1, 2, 3], -0.5), ([1, 2, 4], -1.25)]),
                                        Thought("", [], [([1, 5, 6], -2.0)])])
    meta = dict(ThinkAheadStore(store).meta, rationales=2)
    copy = ThinkAheadStore(tmp_path / "copy.sqlite", meta)
    copy.put(state)
    copy.commit()
    copy.close()
    again = ThinkAheadStore(tmp_path / "copy.sqlite")
    assert again.get("x") == state and again.find(["3", "1"]) == state and again.think


def test_store_bad_input_is_named(store, aligned_run, tmp_path):
    dirs, _, model_dir = aligned_run
    with pytest.raises(FileNotFoundError, match="missing.sqlite"):
        ThinkAheadStore(tmp_path / "missing.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database, just text " * 100)
    with pytest.raises(ValueError, match="junk.sqlite.*not a think-ahead store"):
        ThinkAheadStore(junk)
    with pytest.raises(ValueError, match="beam=8, not 4"):  # a rerun with other settings
        build_store(model_dir, dirs.data, dirs.sids, store, beam=4, users=USERS, progress=False)
    with pytest.raises(ValueError, match="users not in"):
        build_store(model_dir, dirs.data, dirs.sids, tmp_path / "new.sqlite", users=["nobody"], progress=False)
    with pytest.raises(ValueError, match="needs a store"):
        build_engine("think_ahead", EngineConfig(model_dir, dirs.sids))
    stale = tmp_path / "stale.sqlite"  # built for other weights at the same path (a model retrained in place)
    ThinkAheadStore(stale, dict(ThinkAheadStore(store).meta, model_fingerprint="0" * 16)).close()
    with pytest.raises(ValueError, match="stale.sqlite: built with model_fingerprint='0000"):
        build_engine("think_ahead", EngineConfig(model_dir, dirs.sids, think_ahead=stale, think_ahead_base="hf"))


def _from_store_or_extras(served, user, items, banned=frozenset()):
    """Each item lies under a stored prefix or is one of the extra candidates the served ranking adds to those
    (``decoding.ranking.extra_items``: the prior's and the item head's top on ``_ask``'s prompt; the head's,
    computed here with every item under the stored prefixes taken as a beam, include those the engine adds)."""
    engine, loop, _, _ = served
    levels, stored = engine.store.meta["levels"], _stored_prefixes(engine, user)
    history = engine.store.get(user).history
    under = [i for i in engine.trie.items if tuple(_tokens(engine, i)[:levels]) in stored]
    weight, item_weight = fusion_weights(engine.prior)
    row = None
    if item_weight and engine.trie.item_token_ids is not None:
        ids = engine.tok.encode(_asked(served, history)[0], add_special_tokens=False)
        row = loop.run_until_complete(engine.base.item_logprobs(ids))
    extra = extra_items(engine.prior if weight else None, history, [(i, 0.0) for i in under], set(banned),
                        engine.trie, row, max(len(items), engine.store.meta["beam"]))
    return set(items) <= set(under) | set(extra)


def test_online_items_are_children_of_stored_prefixes(served):
    engine, _, _, ds = served
    levels = engine.store.meta["levels"]
    for user in USERS[:3]:
        stored = _stored_prefixes(engine, user)
        hits = engine.stats["think_ahead_hits"]
        rec = _ask(served, engine.store.get(user).history, k=5)
        assert engine.stats["think_ahead_hits"] == hits + 1 and rec.rationale == ""
        ids = [i for i, _ in rec.items]
        assert len(ids) == 5 == len(set(ids)) and all(i in ds.catalog for i in ids)
        scores = [s for _, s in rec.items]
        assert scores == sorted(scores, reverse=True)
        assert _from_store_or_extras(served, user, ids)
        for item, score in rec.items:  # beam items: prefix score + a log-probability (prior items score higher)
            prefix = tuple(_tokens(engine, item)[:levels])
            assert prefix not in stored or score <= stored[prefix] + 1e-6 or item in engine.prior.markov.scores(
                engine.store.get(user).history)


def _prompt(served, user):
    engine, _, conv, _ = served
    return conv.prompt(Session("s", history=engine.store.get(user).history))


def test_think_ahead_returns_the_live_engines_items(aligned_run, served, tmp_path):
    """A store built at the served beam width answers a stored user's history-only prompt, with the API's default
    bans, with the top-10 of the live engine it wraps (the served ranking, prior included)."""
    dirs, _, model_dir = aligned_run
    path = tmp_path / "served.sqlite"
    build_store(model_dir, dirs.data, dirs.sids, path, users=USERS[:3], progress=False)
    engine = build_engine("think_ahead", EngineConfig(model_dir, dirs.sids, think_ahead=path, think_ahead_base="hf"))
    engine.base = served[0].base  # the started hf engine
    assert engine.store.meta["beam"] == 30 and engine.prior is not None and engine.prior.weight > 0
    loop = served[1]
    for user in USERS[:3]:
        history = engine.store.get(user).history
        prompt = _prompt(served, user)
        banned = set(history) if engine.store.meta["exclude_history"] else set()  # as the API bans by default
        ahead = loop.run_until_complete(run(engine, prompt, k=10, banned=banned, history=history))
        live = loop.run_until_complete(run(engine.base, prompt, k=10, banned=banned, history=history))
        assert [i for i, _ in ahead.items] == [i for i, _ in live.items]
        assert all(math.isclose(a, b, abs_tol=1e-4) for (_, a), (_, b) in zip(ahead.items, live.items))
    assert engine.stats == {"think_ahead_hits": 3, "think_ahead_fallbacks": 0}
    engine.store.close()


def _tokens(engine, item):
    return engine.tok.convert_tokens_to_ids(engine.trie.codebook.tokens(item))


def test_banned_brand_is_honoured(served):
    engine, _, _, ds = served
    history = engine.store.get("u1").history
    first = _ask(served, history, k=3)
    brand = ds.catalog[first.items[0][0]]["brand"]
    banned = {i for i in ds.catalog.ids if ds.catalog[i]["brand"] == brand}
    hits = engine.stats["think_ahead_hits"]
    rec = _ask(served, history, banned=banned, k=3)
    assert engine.stats["think_ahead_hits"] == hits + 1  # still served from the stored prefixes
    assert len(rec.items) == 3 and all(ds.catalog[i]["brand"] != brand for i, _ in rec.items)
    assert _from_store_or_extras(served, "u1", [i for i, _ in rec.items], banned)


def test_fallbacks_decode_online(served):
    engine, _, _, ds = served
    history = engine.store.get("u2").history

    def falls_back(**kw):
        before = engine.stats["think_ahead_fallbacks"]
        rec = _ask(served, **kw)
        assert engine.stats["think_ahead_fallbacks"] == before + 1, kw
        return rec

    unknown = ["0", "1", "2"]  # no stored state for this history: full online decoding by the hf engine
    rec = falls_back(history=unknown)
    assert rec.items == _ask(served, unknown, engine=engine.base).items and len(rec.items) == 5
    falls_back(history=history[:-1] + [next(i for i in ds.catalog.ids if i != history[-1])])  # history changed
    thought = falls_back(history=history, think=True, k=2)  # the store holds no rationales (T=0)
    assert len(thought.items) == 2 and (thought.rationale == "" or complete(thought.rationale))
    under = {engine.trie.item_of[s] for s in engine.trie.item_of
             if tuple(s[:engine.store.meta["levels"]]) in _stored_prefixes(engine, "u2")}
    rec = falls_back(history=history, banned=under)  # constraints remove every stored prefix
    assert len(rec.items) == 5 and not {i for i, _ in rec.items} & under


def test_rationales_are_stored_and_replayed(aligned_run, tmp_path):
    """T=2 sampled rationales: both stored; a thinking request replays the first and merges both beams."""
    dirs, _, model_dir = aligned_run
    path = tmp_path / "think.sqlite"
    assert build_store(model_dir, dirs.data, dirs.sids, path, rationales=2, beam=6, max_think_tokens=4,
                       users=["u7"], progress=False) == 1
    state = ThinkAheadStore(path).get("u7")
    assert len(state.thoughts) == 2 and all(len(t.think_ids) <= 4 and len(t.prefixes) == 6 for t in state.thoughts)
    assert all(t.text == "" or complete(t.text) for t in state.thoughts)  # closed at a sentence end, or empty
    loop = asyncio.new_event_loop()
    engine = build_engine("think_ahead", EngineConfig(model_dir, dirs.sids, think_ahead=path, think_ahead_base="hf"))
    try:
        loop.run_until_complete(engine.start())
        ds = RecDataset.load(dirs.data)
        conv = Conversation(ds, engine.trie.codebook, engine.tok)
        served = (engine, loop, conv, ds)
        rec = _ask(served, state.history, k=4, think=True)
        assert engine.stats == {"think_ahead_hits": 1, "think_ahead_fallbacks": 0}
        assert rec.rationale == state.thoughts[0].text and len(rec.items) == 4
        assert all(i in ds.catalog and not math.isnan(s) for i, s in rec.items)  # fused: not log-probs
        _ask(served, state.history, k=4, think=False)  # a thinking store cannot answer a non-thinking request
        assert engine.stats["think_ahead_fallbacks"] == 1
    finally:
        engine.shutdown()
        loop.close()


def test_store_errors_fall_back(served, store, aligned_run, tmp_path):
    """A malformed row, or a store that stops answering, is served by the live engine; a writer holding the
    store does not block lookups (read-only + WAL)."""
    engine, _, _, _ = served
    history = engine.store.get("u3").history
    writer = sqlite3.connect(store)
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("UPDATE users SET thoughts = thoughts WHERE user_id = 'u0'")
    hits = engine.stats["think_ahead_hits"]
    _ask(served, history, k=3)
    assert engine.stats["think_ahead_hits"] == hits + 1
    writer.rollback()
    writer.close()

    bad = tmp_path / "bad.sqlite"
    shutil.copy(store, bad)
    with sqlite3.connect(bad) as db:
        db.execute("UPDATE users SET thoughts = '{not json' WHERE user_id = 'u3'")
    dirs, _, model_dir = aligned_run
    broken = build_engine("think_ahead", EngineConfig(model_dir, dirs.sids, think_ahead=bad, think_ahead_base="hf"))
    broken.base = engine.base  # the started hf engine
    rec = _ask(served, history, k=3, engine=broken)
    assert broken.stats == {"think_ahead_hits": 0, "think_ahead_fallbacks": 1}
    assert rec.items == _ask(served, history, k=3, engine=engine.base).items
    broken.store.close()  # a store that fails on every query
    _ask(served, history, k=3, engine=broken)
    assert broken.stats["think_ahead_fallbacks"] == 2


def test_store_settings_checked_at_startup(aligned_run, store, tmp_path):
    dirs, _, model_dir = aligned_run
    with pytest.raises(ValueError, match="max_history=5, but the server has 3"):  # the store took served.json's
        build_engine("think_ahead", EngineConfig(model_dir, dirs.sids, think_ahead=store, think_ahead_base="hf",
                                                 max_history=3))
    other = tmp_path / "other-model"
    shutil.copytree(model_dir, other)
    with pytest.raises(ValueError, match="built with model="):
        build_engine("think_ahead", EngineConfig(other, dirs.sids, think_ahead=store, think_ahead_base="hf"))
