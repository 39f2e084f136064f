"""Reasoning evaluation: rationale quality on hand-made cases and the with/without-reasoning ablation."""
from __future__ import annotations

import pytest

from think_rec.data.split import leave_one_out
from think_rec.decoding import ThinkResult
from think_rec.eval.reasoning import (choose_think, evaluate_reasoning, rationale_quality, reasoning_ablation,
                                      think_choice)
from think_rec.model.artefacts import RecModel

ITEMS = {
    "h1": {"item_id": "h1", "title": "Blue Ceramic Mug", "brand": "Acme", "categories": ["Kitchen", "Mugs"]},
    "h2": {"item_id": "h2", "title": "Steel Kettle", "brand": "Boil", "categories": ["Kitchen", "Kettles"]},
    "t": {"item_id": "t", "title": "Green Glass Teapot", "brand": "Acme", "categories": ["Kitchen", "Teapots"]},
    "x": {"item_id": "x", "title": "Garden Hose", "brand": "Hoser", "categories": ["Garden"]},
}


def test_rationale_quality_hand_made():
    results = [
        ThinkResult(["They loved the Blue Ceramic Mug and Acme things."], [("t", 0.0), ("x", -1.0)], [["h1"]], [True]),
        ThinkResult(["Next: the Green Glass Teapot."], [("x", 0.0)]),
        ThinkResult([""], [("t", 0.0)]),
        ThinkResult(["something nice"], [("x", 0.0), ("t", -1.0)]),
    ]
    q = rationale_quality(results, [["h1", "h2"]] * 4, ["t"] * 4, ITEMS)
    assert q["grounding"] == pytest.approx(1 / 4)  # only the first cites a history title / attribute
    assert q["leakage"] == pytest.approx(1 / 4)  # the second names the target
    assert q["consistency"] == pytest.approx((0.5 + 0 + 0 + 0) / 4)  # "Acme" matches t, not the hose
    assert q["mean_length"] == pytest.approx((9 + 5 + 0 + 2) / 4)
    assert q["citations"] == pytest.approx(1 / 4) and q["complete"] == pytest.approx(2 / 4)
    assert q["closed_by_model"] == pytest.approx(1 / 4) and q["readability"] > 0


def test_ablation_rows_on_aligned_model(aligned_run, synthetic_dataset):
    _, codebook, model_dir = aligned_run
    rec = RecModel.load(model_dir, codebook, synthetic_dataset)
    test = leave_one_out(synthetic_dataset.interactions).test.select(range(6))
    rec.served.rationale_samples = 3  # served: the greedy rationale and two draws
    rows, results = reasoning_ablation(rec, test, max_history=4, max_think_tokens=5, batch_size=3, progress=False)
    assert [r["system"] for r in rows] == ["no_reasoning", "reasoning", "reasoning_greedy", "reasoning_conditioned"]
    empty, think, greedy, conditioned = rows
    assert greedy["ndcg@10"] == conditioned["ndcg@10"]  # served as trained: after the rationale, weight 0
    assert all(len(r.rationales) == 3 for r in results)
    assert empty["mean_length"] == 0 and empty["grounding"] == empty["leakage"] == 0
    bounded = ("recall@10", "ndcg@10", "grounding", "complete", "closed_by_model")
    assert think["mean_length"] <= 5 and all(0 <= think[m] <= 1 for m in bounded)
    assert len(results) == 6 and all(len(r.items) == 10 for r in results)
    assert think["complete"] == sum(bool(r.rationales[0]) for r in results) / 6  # a sentence, or nothing
    again, _ = evaluate_reasoning(rec, test, think=False, max_history=4, batch_size=6, progress=False)
    assert {k: again[k] for k in ("recall@10", "ndcg@10")} == {k: empty[k] for k in ("recall@10", "ndcg@10")}
    given, _ = evaluate_reasoning(rec, test, rationales=[""] * 6, condition=True, max_history=4, batch_size=6,
                                  progress=False)  # a given empty rationale is the empty think
    assert given["ndcg@10"] == empty["ndcg@10"] and given["mean_length"] == 0


def test_choose_think_grid_and_its_history_mode_is_the_empty_think(aligned_run, synthetic_dataset):
    _, codebook, model_dir = aligned_run
    rec = RecModel.load(model_dir, codebook, synthetic_dataset)
    valid = leave_one_out(synthetic_dataset.interactions).valid.select(range(6))
    (mode, weight), record = choose_think(rec, valid, weights=(0.0, 4.0), max_history=4, max_think_tokens=5,
                                          batch_size=6, progress=False)
    scores = record["valid_ndcg@10"]
    assert set(scores) == {"rationale@0", "rationale@4", "history@0", "history@4"}
    assert set(record["valid_faithful@1"]) == set(scores)
    assert scores[f"{mode}@{weight:g}"] >= record["valid_ndcg@10_no_reasoning"]  # never below the empty think
    assert scores["history@0"] == record["valid_ndcg@10_no_reasoning"]  # the rationale only explains
    followed, _ = evaluate_reasoning(rec, valid, follow_weight=1e3, max_history=4, max_think_tokens=5, batch_size=6,
                                     progress=False)
    free, _ = evaluate_reasoning(rec, valid, follow_weight=0.0, max_history=4, max_think_tokens=5, batch_size=6,
                                 progress=False)
    assert followed["faithful@1"] >= free["faithful@1"]  # a dominant weight puts an item the claims fit first


def test_the_served_thinking_ranking_is_the_most_faithful_that_does_not_lower_accuracy():
    none = [0.0, 1.0, 0.0, 0.5] * 25
    plain, low = ("history", 0.0), [0.0] * 100
    noisy = {("rationale", 1.0): [1.0, 0.0, 0.0, 0.5] * 25, plain: none}  # same mean, per-user swings
    assert think_choice(noisy, {("rationale", 1.0): low, plain: low}, none, 1.0)[0] == plain  # ties: more accurate
    faithful = {("rationale", 1.0): [1.0] * 100, plain: low}
    assert think_choice(noisy, faithful, none, 1.0)[0] == ("rationale", 1.0)  # as accurate and more faithful
    worse = {**noisy, ("history", 32.0): [0.0, 0.9, 0.0, 0.5] * 25}  # loses on a quarter of the users
    assert think_choice(worse, {**faithful, ("history", 32.0): [1.0] * 100}, none, 1.0)[0] == ("rationale", 1.0)
    better = {**noisy, ("rationale", 2.0): [0.2, 1.0, 0.3, 0.5] * 25}  # gains on half the users
    faith = {**faithful, ("rationale", 2.0): [0.5] * 100}
    choice, gain_se = think_choice(better, faith, none, 1.0)
    assert choice == ("rationale", 2.0) and gain_se > 1.0  # a ranking that helps beats a more faithful one
    assert think_choice(better, faith, none, gain_se + 0.1)[0] == ("rationale", 1.0)  # a stricter rule: no help
