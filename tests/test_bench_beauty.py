"""``bench rec --dataset beauty``: the shared Beauty file, behaviour SIDs for a text-less catalog, published rows."""
from __future__ import annotations

import json

import pytest

from think_rec.data.loaders import load_source
from think_rec.data.schema import Catalog, Interactions, RecDataset
from think_rec.data.split import history_exclusion, leave_one_out
from think_rec.eval.bench_rec import DATASETS, SID_ENCODER, sid_encoder
from think_rec.eval.published import add_published
from think_rec.eval.report import write_report
from think_rec.itemic.build import item_embeddings
from think_rec.itemic.codebook import SIDCodebook
from think_rec.prompts import sequential_example

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def test_beauty_keeps_every_user_in_the_leave_one_out_split(shared_data):
    source, folder = DATASETS["beauty"]
    data = load_source(source, shared_data / folder)
    assert (len(data.interactions), len(data.catalog)) == (22363, 12101)
    split = leave_one_out(data.interactions, max_history=49)
    seqs = data.interactions.sequences
    assert len(split.test) == len(split.valid) == 22363
    assert [s[-1] for s in seqs[:100]] == split.test["target"][:100]
    assert [s[-2] for s in seqs[:100]] == split.valid["target"][:100]
    assert history_exclusion(split) and sid_encoder(data) == "behaviour"


def text_less(titles: list[str] | None = None) -> RecDataset:
    ids = [str(i) for i in range(6)]
    rows = [{"item_id": i, "title": t} for i, t in zip(ids, titles or [""] * 6)]
    return RecDataset("toy", Catalog.from_rows(rows), Interactions.from_rows(
        {"user_id": str(u), "item_ids": ids[u:u + 4] + ids[:u]} for u in range(6)))


def test_a_catalog_without_text_gets_behaviour_sids_and_refuses_text():
    data = text_less()
    assert sid_encoder(data) == "behaviour"
    assert sid_encoder(text_less([f"item {i}" for i in range(6)])) == SID_ENCODER
    with pytest.raises(ValueError, match="'toy' has no item text.*use encoder 'behaviour'"):
        item_embeddings(data, "text+behaviour", progress=False)
    emb, meta = item_embeddings(data, "behaviour", progress=False)
    assert emb.shape[0] == 6 and meta["encoder"] == "behaviour"
    book = SIDCodebook({i: (int(i), 0) for i in data.catalog.ids}, [8, 8])
    user = sequential_example(["0", "1"], None, data.catalog, book)["messages"][1]["content"][0]["text"]
    assert f"1. {book.sid_string('0')}\n2. {book.sid_string('1')}\n" in user  # no dangling space


def test_published_rows_come_out_marked_in_the_report(tmp_path):
    ours = {"system": "markov", **dict.fromkeys(METRICS, 0.01)}
    payload = add_published({"benchmark": "rec", "dataset": "beauty", "rows": [ours]})
    path = write_report("beauty", payload, tmp_path, metric_keys=METRICS)
    saved = json.loads(path.read_text())
    published = ["published_onerec_think", "published_tiger", "published_sasrec"]
    assert [r["system"] for r in saved["rows"]] == ["markov", *published]
    assert all(r["published"] and r["source"] for r in saved["rows"][1:]) and "published" not in saved["rows"][0]
    assert "leave-one-out" in saved["protocol_notes"]
    md = (tmp_path / "beauty.md").read_text()
    assert "| published_onerec_think (published) | 0.0563 | 0.0791 | 0.0398 | 0.0471 |" in md
    assert "| published_sasrec (published) | 0.0402 | 0.0607 | 0.0254 | 0.0320 |" in md
    assert "| markov | 0.0100 |" in md and "- published_tiger (published): TIGER" in md
    assert add_published({"dataset": "scientific", "rows": [ours]}) == {"dataset": "scientific", "rows": [ours]}
    with pytest.raises(ValueError, match="'source'"):
        write_report("bad", {"rows": [{**ours, "published": True}]}, tmp_path)
