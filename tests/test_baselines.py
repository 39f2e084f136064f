"""SASRec beats popularity on Markov sequences; popularity, the item-transition (Markov) baseline and
history exclusion behave as documented."""
from __future__ import annotations

import json
import random

import pytest
import torch

from think_rec.data.schema import Interactions
from think_rec.data.split import has_repeats, history_exclusion, leave_one_out
from think_rec.decoding.prior import MARKOV_CONFIGS
from think_rec.eval import rec
from think_rec.eval.evaluate import evaluate_ranker, top_k_from_scores
from think_rec.eval.markov import MarkovConfig, MarkovModel, markov_ranker
from think_rec.eval.popularity import popularity_ranker
from think_rec.eval.sasrec import (SASRecConfig, load_sasrec, save_sasrec, score_all, sasrec_ranker,
                                   train_sasrec)
from think_rec.finetune.served import choose_markov


def markov_split(n_items: int = 60, users: int = 400, seed: int = 0):
    """Each item has two likely successors; popularity is nearly flat."""
    rng = random.Random(seed)
    perms = [rng.sample(range(n_items), n_items) for _ in range(2)]
    succ = {i: [p[i] for p in perms] for i in range(n_items)}  # every item has two predecessors
    rows = []
    for u in range(users):
        seq = [rng.randrange(n_items)]
        for _ in range(rng.randint(6, 14)):
            seq.append(rng.choice(succ[seq[-1]]) if rng.random() < 0.9 else rng.randrange(n_items))
        rows.append({"user_id": u, "item_ids": seq})
    return leave_one_out(Interactions.from_rows(rows), max_history=20), [str(i) for i in range(n_items)]


def test_popularity_ranker():
    rank = popularity_ranker([["a", "b", "a"], ["a", "c", "b"]], k=2)
    assert rank([["x"], []]) == [["a", "b"], ["a", "b"]]
    assert popularity_ranker([["a", "b", "a"], ["c"]], k=2, exclude_history=True)([["a"]]) == [["b", "c"]]


def test_top_k_exclude_history():
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    assert top_k_from_scores(scores, ["a", "b", "c"], [["a"]], 2) == [["a", "b"]]
    assert top_k_from_scores(scores, ["a", "b", "c"], [["a"]], 2, exclude_history=True) == [["b", "c"]]


def test_sasrec_beats_popularity():
    split, items = markov_split()
    config = SASRecConfig(hidden=32, max_len=20, dropout=0.2, lr=5e-3, epochs=80, patience=8,
                          batch_size=64, loss="bce")
    model = train_sasrec(split, items, config, time_budget_seconds=15, progress=False)
    assert score_all(model, [["1", "2"]]).shape == (1, len(items))
    sas = evaluate_ranker(sasrec_ranker(model, 10), split.test, progress=False)
    pop = evaluate_ranker(popularity_ranker(split.train["item_ids"], 10), split.test, progress=False)
    assert sas["ndcg@10"] > pop["ndcg@10"] + 0.05, (sas, pop)
    assert sas["recall@10"] > pop["recall@10"]


def cycle_split(n_items: int = 20, users: int = 150, seed: int = 0):
    """Deterministic cycle 0 -> 1 -> ... -> n-1 -> 0; each user walks 6-12 steps of it (no repeats)."""
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        start = rng.randrange(n_items)
        rows.append({"user_id": u, "item_ids": [(start + t) % n_items for t in range(rng.randint(6, 12))]})
    return leave_one_out(Interactions.from_rows(rows), max_history=20), [str(i) for i in range(n_items)]


# popularity c:4, b:3, a:2, d:2, e:2 (ties by first appearance: a, d, e);
# transitions a->b:2, b->c:2, b->d:1, e->d:1, e->c:1
HAND = [["a", "b", "c"], ["a", "b", "d"], ["b", "c"], ["e", "d"], ["e", "c"], ["c"]]


def test_markov_scores_with_decay():
    model = MarkovModel.fit(HAND)  # last_n=5, decay=0.5
    assert model.by_popularity == ["c", "b", "a", "d", "e"]
    assert model.scores(["a", "b"]) == {"c": 2.0, "d": 1.0, "b": 0.5 * 2}
    assert model.scores(["b", "a"]) == {"b": 2.0, "c": 0.5 * 2, "d": 0.5 * 1}
    assert MarkovModel(HAND, MarkovConfig(last_n=1)).scores(["a", "b"]) == {"c": 2.0, "d": 1.0}
    deep = MarkovModel(HAND, MarkovConfig(last_n=3, decay=0.25))
    assert deep.scores(["e", "a", "b"]) == {"c": 2 + 0.0625, "d": 1 + 0.0625, "b": 0.25 * 2}
    assert deep.scores(["x", "e", "a", "b"]) == deep.scores(["e", "a", "b"])  # only the last 3 vote
    assert model.scores(["unknown"]) == {} and model.scores([]) == {}


def test_markov_rank_ties_exclusion_and_fill():
    model = MarkovModel(HAND)
    # scores c:2, b:1, d:1 -> b before d (more popular), then the most popular of the rest
    assert model.rank(["a", "b"], k=5) == ["c", "b", "d", "a", "e"]
    assert model.rank(["a", "b"], k=2) == ["c", "b"]
    assert model.rank(["a", "b"], k=5, exclude={"a", "b"}) == ["c", "d", "e"]
    # e -> d and e -> c once each: c (popularity 4) beats d (2) though d was seen first after e
    assert model.rank(["e"], k=3) == ["c", "d", "b"]
    assert model.rank(["e"], k=10, exclude={"e"}) == ["c", "d", "b", "a"]  # fewer than k items left
    assert model.rank(["unknown"], k=3) == ["c", "b", "a"]  # pure popularity
    rank = markov_ranker(model, k=3, exclude_history=True)
    assert rank([["a", "b"], ["e"]]) == [["c", "d", "e"], ["c", "d", "b"]]
    assert markov_ranker(model, k=3)([["a", "b"]]) == [["c", "b", "d"]]


def test_markov_window_and_backward_counts():
    wide = MarkovModel(HAND, MarkovConfig(last_n=1, window=2, span_decay=0.5))
    # a->b twice at distance 1; a->c and a->d once each at distance 2 (weight 0.5)
    assert wide.scores(["a"]) == {"b": 2.0, "c": 0.5, "d": 0.5}
    assert wide.scores(["b"]) == MarkovModel(HAND, MarkovConfig(last_n=1)).scores(["b"])  # nothing 2 after b
    two_way = MarkovModel(HAND, MarkovConfig(last_n=1, backward=0.25))
    assert two_way.scores(["b"]) == {"c": 2.0, "d": 1.0, "a": 0.25 * 2}  # a came before b twice
    assert two_way.scores(["d"]) == {"b": 0.25, "e": 0.25}
    again = MarkovModel.from_dict(json.loads(json.dumps(wide.to_dict())))
    assert again.config == wide.config and again.scores(["a"]) == wide.scores(["a"])


def test_the_prior_config_is_chosen_on_the_users_given():
    # the next item is fixed by the item two back, the one in between is noise: only a window > 1 sees it
    rng = random.Random(0)
    train = [[f"p{u % 20}", f"n{rng.randrange(500)}", f"s{u % 20}"] for u in range(400)]
    histories = [[f"p{u % 20}", f"n{rng.randrange(500)}"] for u in range(200)]
    targets = [f"s{u % 20}" for u in range(200)]
    markov, by_config = choose_markov(train, histories, targets, exclude_history=False)
    assert markov.config.window == 3 and len(by_config) == len(MARKOV_CONFIGS)
    first_order = by_config[MarkovConfig().key]
    assert max(by_config.values()) > 0.9 > 0.2 > first_order


def test_markov_config_validation():
    with pytest.raises(ValueError, match="last_n"):
        MarkovConfig(last_n=0)
    with pytest.raises(ValueError, match="decay"):
        MarkovConfig(decay=1.5)
    with pytest.raises(ValueError, match="window"):
        MarkovConfig(window=0)
    with pytest.raises(ValueError, match="backward"):
        MarkovConfig(backward=2.0)


def test_markov_learns_transitions():
    split, _ = markov_split()
    train = split.train["item_ids"]
    markov = evaluate_ranker(markov_ranker(MarkovModel(train), 10), split.valid, progress=False)
    pop = evaluate_ranker(popularity_ranker(train, 10), split.valid, progress=False)
    assert markov["ndcg@10"] > pop["ndcg@10"] + 0.1, (markov, pop)


def test_history_exclusion_reads_train_and_valid_only():
    assert not has_repeats([["a", "b"], ["b", "a"], []])
    assert has_repeats([["a", "b"], ["c", "a", "c"]])
    assert not has_repeats([])

    def split_of(*sequences):
        return leave_one_out(Interactions.from_rows([{"user_id": n, "item_ids": s} for n, s in enumerate(sequences)]))

    assert not history_exclusion(split_of(["a", "b", "c", "d"], ["x", "y", "x", "z"]))  # a valid target repeats
    assert history_exclusion(split_of(["a", "b", "c", "d"], ["x", "y", "z", "x"]))  # only a test target does
    assert history_exclusion(cycle_split()[0])


def test_sasrec_config_loss_validated_and_saved(tmp_path):
    with pytest.raises(ValueError, match="loss"):
        SASRecConfig(loss="softmax")
    with pytest.raises(ValueError, match="init_std"):
        SASRecConfig(init_std=0.0)
    split, items = cycle_split(users=20)
    model = train_sasrec(split, items, SASRecConfig(hidden=16, max_len=10, epochs=1, loss="ce"), progress=False)
    loaded = load_sasrec(save_sasrec(model, tmp_path))
    assert loaded.config.loss == "ce"
    assert torch.allclose(score_all(loaded, [["1", "2"]]), score_all(model, [["1", "2"]]))
    blob = torch.load(tmp_path / "sasrec.pt", weights_only=True)
    for field in ("loss", "init_std"):  # a file saved before these fields existed
        del blob["config"][field]
    torch.save(blob, tmp_path / "sasrec.pt")
    old = load_sasrec(tmp_path)
    assert (old.config.loss, old.config.init_std) == ("bce", None)
    assert torch.allclose(score_all(old, [["1", "2"]]), score_all(model, [["1", "2"]]))


def test_sasrec_ce_learns_a_cycle():
    split, items = cycle_split()
    config = SASRecConfig(hidden=32, max_len=20, dropout=0.1, lr=5e-3, epochs=30, patience=5, batch_size=32,
                          loss="ce")
    model = train_sasrec(split, items, config, time_budget_seconds=20, progress=False, exclude_history=True)
    assert model.exclude_history is True
    sas = evaluate_ranker(sasrec_ranker(model, 10, exclude_history=True), split.test, progress=False)
    # random ranking would give recall@10 = 10 / 20 and NDCG@10 ~0.2; the next item is deterministic
    assert sas["recall@10"] > 0.95 and sas["ndcg@10"] > 0.8, sas


def test_exclusion_removes_history_from_every_ranker(monkeypatch):
    split, items = markov_split(n_items=30, users=120)
    train = split.train["item_ids"]
    histories = split.valid["history"][:50]
    model = train_sasrec(split, items, SASRecConfig(hidden=16, max_len=20, epochs=2, loss="ce"), progress=False,
                         exclude_history=True)
    calls = []

    def fake_beam_search(model, tokenizer, prompts, trie, *, num_beams, k, exclude=None, batch_size=64):
        calls.append(exclude)
        return [[(i, 0.0) for i in items if not exclude or i not in exclude[n]][:k] for n in range(len(prompts))]

    monkeypatch.setattr(rec, "beam_search", fake_beam_search)
    k = 10
    scorer = rec.ThinkRecScorer.__new__(rec.ThinkRecScorer)  # no model: the beam search is faked
    scorer.model = scorer.processor = scorer.trie = None
    scorer.prompt, scorer.num_beams, scorer.batch_size = (lambda h: " ".join(h)), k, 64
    rankers = {"popularity": popularity_ranker(train, k, exclude_history=True),
               "markov": markov_ranker(MarkovModel(train), k, exclude_history=True),
               "sasrec": sasrec_ranker(model, k, exclude_history=True),
               "generative": scorer.ranker(k, exclude_history=True)}
    for name, rank in rankers.items():
        ranked = rank(histories)
        assert len(ranked) == len(histories), name
        for hist, row in zip(histories, ranked):
            assert len(row) == k and not set(row) & set(hist), (name, hist, row)
    assert calls == [[set(h) for h in histories]]
    # without exclusion the history items do come back (the sequences revisit items)
    plain = {"popularity": popularity_ranker(train, k), "markov": markov_ranker(MarkovModel(train), k),
             "sasrec": sasrec_ranker(model, k)}
    for name, rank in plain.items():
        assert any(set(row) & set(h) for h, row in zip(histories, rank(histories))), name
