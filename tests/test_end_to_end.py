"""Stage 1 end to end on a generated catalog: prepare -> SIDs -> tiny preset -> align -> ranked catalog items."""
from think_rec.data.split import leave_one_out
from think_rec.eval.evaluate import evaluate_ranker
from think_rec.eval.rec import think_rec_ranker
from think_rec.finetune.align import train_align
from think_rec.finetune.config import AlignConfig
from think_rec.pipeline import RunDirs, ensure_sids, ensure_tiny


def test_pipeline_ranks_only_catalog_items(synthetic_dataset, tmp_path):
    dirs = RunDirs(tmp_path)
    synthetic_dataset.save(dirs.data)
    codebook = ensure_sids(dirs, synthetic_dataset, encoder="text", codebook_size=8, levels=2)
    ensure_tiny(dirs, synthetic_dataset)
    config = AlignConfig(output_dir=str(dirs.align), model=str(dirs.tiny), data_dir=str(dirs.data),
                         sids_dir=str(dirs.sids), task_mix={"sequential": 1.0}, with_images=False, max_history=3,
                         warmup_max_steps=5, max_steps=10, per_device_train_batch_size=16,
                         save_steps=1000, disable_tqdm=True)
    model_dir = train_align(config)
    test = leave_one_out(synthetic_dataset.interactions).test.select(range(16))
    rank = think_rec_ranker(model_dir, synthetic_dataset, codebook, max_history=3)
    rankings = rank(test["history"])
    assert all(len(r) == 10 == len(set(r)) and set(r) <= set(synthetic_dataset.catalog.ids) for r in rankings)
    metrics = evaluate_ranker(rank, test, batch_size=8, progress=False)
    assert metrics["users"] == 16 and 0.0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= 1.0
