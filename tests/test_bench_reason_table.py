"""``bench reason`` adds its ``served_think`` row to the ``bench rec`` table of the stage-1 model it built on."""
from __future__ import annotations

import json

from think_rec.eval.bench_reason import add_served_think, scored_table
from think_rec.eval.report import write_report

THINK = {"think_ranking": "history", "follow_weight": 0.0}


def table(tmp_path, fingerprint="aaaa"):
    rows = [{"system": s, "recall@5": 0.1, "recall@10": 0.2, "ndcg@5": 0.05, "ndcg@10": n, "train_seconds": t}
            for s, n, t in (("served", 0.08, 600.0), ("served_model", 0.04, 600.0), ("markov", 0.07, 0.0))]
    write_report("scientific", {"benchmark": "rec", "dataset": "scientific", "eval_users": 3,
                                "model_fingerprint": fingerprint, "rows": rows}, tmp_path)
    return tmp_path / "scientific.json"


def think_row(users=3):
    return {"system": "served_think", "recall@5": 0.1, "recall@10": 0.3, "ndcg@5": 0.06, "ndcg@10": 0.09,
            "train_seconds": 400.0, "eval_users": users}


def test_served_think_goes_after_served_with_both_stages_seconds(tmp_path):
    path = table(tmp_path)
    assert add_served_think(path, think_row(), "aaaa", "bbbb", THINK)
    payload = json.loads(path.read_text())
    assert [r["system"] for r in payload["rows"]] == ["served", "served_think", "served_model", "markov"]
    assert payload["rows"][1]["train_seconds"] == 1000.0
    assert payload["served_think"]["model_fingerprint"] == "bbbb"
    assert payload["served_think"]["think_ranking"] == "history"
    assert "| served_think |" in (tmp_path / "scientific.md").read_text()
    assert add_served_think(path, think_row(), "aaaa", "cccc", THINK)  # a re-run replaces the row
    assert [r["system"] for r in json.loads(path.read_text())["rows"]].count("served_think") == 1


def test_another_stage1_model_or_user_set_leaves_the_table_alone(tmp_path):
    path = table(tmp_path)
    before = path.read_text()
    assert not add_served_think(path, think_row(), "other", "bbbb", THINK)
    assert not add_served_think(path, think_row(users=2), "aaaa", "bbbb", THINK)
    assert not add_served_think(tmp_path / "industrial.json", think_row(), "aaaa", "bbbb", THINK)
    assert path.read_text() == before
    # what bench reason asks before it scores every test user for the row
    assert scored_table(path, "aaaa", 3)["model_fingerprint"] == "aaaa"
    assert scored_table(path, "other", 3) is None and scored_table(path, "aaaa", 2) is None
    assert scored_table(tmp_path / "industrial.json", "aaaa", 3) is None
