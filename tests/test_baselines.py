"""SASRec beats popularity on Markov sequences; popularity and exclusion behave as documented."""
from __future__ import annotations

import random

from think_rec.data.schema import Interactions
from think_rec.data.split import leave_one_out
from think_rec.eval.evaluate import evaluate_ranker, top_k_from_scores
from think_rec.eval.popularity import popularity_ranker
from think_rec.eval.sasrec import SASRecConfig, score_all, sasrec_ranker, train_sasrec

import torch


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
                          batch_size=64)
    model = train_sasrec(split, items, config, time_budget_seconds=15, progress=False)
    assert score_all(model, [["1", "2"]]).shape == (1, len(items))
    sas = evaluate_ranker(sasrec_ranker(model, 10), split.test, progress=False)
    pop = evaluate_ranker(popularity_ranker(split.train["item_ids"], 10), split.test, progress=False)
    assert sas["ndcg@10"] > pop["ndcg@10"] + 0.05, (sas, pop)
    assert sas["recall@10"] > pop["recall@10"]
