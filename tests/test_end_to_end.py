"""Stage 1 end to end on a generated catalog: prepare -> SIDs -> tiny preset -> align -> ranked catalog items."""
from think_rec.data.split import leave_one_out
from think_rec.eval.evaluate import evaluate_ranker
from think_rec.eval.rec import think_rec_ranker


def test_pipeline_ranks_only_catalog_items(synthetic_dataset, aligned_run):
    _, codebook, model_dir = aligned_run
    test = leave_one_out(synthetic_dataset.interactions).test.select(range(16))
    rank = think_rec_ranker(model_dir, synthetic_dataset, codebook, max_history=3)
    rankings = rank(test["history"])
    assert all(len(r) == 10 == len(set(r)) and set(r) <= set(synthetic_dataset.catalog.ids) for r in rankings)
    metrics = evaluate_ranker(rank, test, batch_size=8, progress=False)
    assert metrics["users"] == 16 and 0.0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= 1.0
