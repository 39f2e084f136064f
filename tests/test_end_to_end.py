"""Stage 1 end to end on a generated shop: prepare -> SIDs -> tiny preset -> align -> ranked catalog items,
and the trained tiny model beats popularity there (valid split; the shop's users follow item complements)."""
import json

from think_rec.data.split import leave_one_out
from think_rec.eval.evaluate import evaluate_ranker
from think_rec.eval.popularity import popularity_ranker
from think_rec.eval.rec import think_rec_ranker


def test_loss_falls_during_alignment(aligned_run):
    dirs, _, _ = aligned_run
    losses = [row["loss"] for row in json.loads((dirs.align / "multitask" / "log_history.json").read_text())
              if "loss" in row]
    assert len(losses) >= 5 and losses[-1] < 0.8 * losses[0], losses


def test_trained_tiny_model_ranks_catalog_items_and_beats_popularity(synthetic_dataset, aligned_run):
    _, codebook, model_dir = aligned_run
    split = leave_one_out(synthetic_dataset.interactions)
    rank = think_rec_ranker(model_dir, synthetic_dataset, codebook, max_history=5)
    rankings = rank(split.valid["history"][:16])
    assert all(len(r) == 10 == len(set(r)) and set(r) <= set(synthetic_dataset.catalog.ids) for r in rankings)
    think_rec = evaluate_ranker(rank, split.valid, batch_size=50, progress=False)
    popularity = evaluate_ranker(popularity_ranker(split.train["item_ids"]), split.valid, progress=False)
    assert think_rec["users"] == popularity["users"] == len(synthetic_dataset.interactions)
    assert think_rec["ndcg@10"] > 1.5 * popularity["ndcg@10"], (think_rec, popularity)
    assert think_rec["recall@10"] > popularity["recall@10"], (think_rec, popularity)
