"""Ranking metrics against hand-computed values; the report writer's three files."""
from __future__ import annotations

import json
import math

import pytest

from think_rec.eval.metrics import aggregate, mrr, ndcg_at_k, rank_of, ranked_metrics, recall_at_k
from think_rec.eval.report import write_report


def test_single_user_values():
    ranked = ["a", "b", "c", "d", "e", "f"]
    assert rank_of(ranked, "c") == 3 and rank_of(ranked, "z") is None
    assert recall_at_k(ranked, "c", 3) == 1.0 and recall_at_k(ranked, "c", 2) == 0.0
    assert ndcg_at_k(ranked, "a", 5) == 1.0
    assert ndcg_at_k(ranked, "c", 5) == pytest.approx(0.5)  # 1/log2(4)
    assert ndcg_at_k(ranked, "f", 5) == 0.0
    assert mrr(ranked, "d") == 0.25 and mrr(ranked, "f", k=5) == 0.0


def test_aggregate_over_users():
    rankings = [["t", "x"], ["x", "t"], ["x", "y", "z", "w", "v", "t"], ["x"]]
    targets = ["t", "t", "t", "t"]
    m = aggregate(rankings, targets, ks=(5, 10))
    assert m["recall@5"] == pytest.approx(2 / 4)
    assert m["recall@10"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(7)) / 4)
    assert m["mrr"] == pytest.approx((1 + 0.5 + 1 / 6) / 4)
    with pytest.raises(ValueError, match="rankings"):
        aggregate(rankings, targets[:2])
    per_user = [1.0, 1 / math.log2(3), 1 / math.log2(7), 0.0]
    mean = sum(per_user) / 4
    se = math.sqrt(sum((v - mean) ** 2 for v in per_user) / 3 / 4)
    assert ranked_metrics(rankings, targets) == pytest.approx({**m, "ndcg@10_se": se})
    assert set(ranked_metrics(rankings, targets, ("ndcg@10",))) == {"ndcg@10", "ndcg@10_se"}


def test_write_report(tmp_path):
    payload = {"benchmark": "offline", "dataset": "toy",
               "rows": [{"system": "a", "recall@10": 0.5, "ndcg@10": 0.25},
                        {"system": "b", "recall@10": 0.1, "ndcg@10": 0.05}], "users": 10, "learning_rate": 1e-5}
    path = write_report("toy", payload, tmp_path)
    assert json.loads(path.read_text()) == payload
    md = (tmp_path / "toy.md").read_text()
    assert "| system | recall@10 | ndcg@10 |" in md and "| a | 0.5000 | 0.2500 |" in md
    assert "**learning_rate**: 1e-05" in md
    assert (tmp_path / "toy.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="rows"):
        write_report("bad", {"benchmark": "x", "rows": [{"recall@10": 1.0}]}, tmp_path)
