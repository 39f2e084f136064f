"""``think-rec bench sids-quality``: which semantic-ID codebook lets the stage-1 model recommend best.

Each codebook (RQ-KMeans, a shape x an encoder) gets the same stage-1 training: the sequence phase of
``finetune/configs/rec_tiny.yaml`` within the same wall-clock budget, from the same random tiny preset. Its
row is the model's valid NDCG@10 (trie beam search over the bare SID stream, history excluded as in
``bench rec``, a seeded sample of valid users; the test split is never read). Rows are cached per codebook,
so an interrupted run resumes with the next one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from think_rec.data.split import history_exclusion, leave_one_out, sample_users
from think_rec.finetune.align import train_align
from think_rec.itemic.build import item_embeddings, quantise
from think_rec.itemic.encoders import encode_text

from .bench_rec import RECIPE, align_config, prepare_run
from .evaluate import evaluate_ranker
from .rec import ThinkRecScorer
from .report import write_report

# shape -> (levels, codes per level, collision strategy); 3x256 + an extra level is the build default
SHAPES = {"3x256": (3, 256, "extra-level"), "3x64": (3, 64, "balanced"), "4x32": (4, 32, "balanced")}
ENCODERS = ("text", "text+behaviour")
METRICS = ("valid_ndcg@10", "valid_recall@10", "collision_rate_after")


def run(dataset: str = "scientific", budget_minutes: float = 4.0, shapes: tuple[str, ...] = tuple(SHAPES),
        encoders: tuple[str, ...] = ENCODERS, valid_users: int | None = 2000, num_beams: int = 30,
        work_dir: str | Path = "runs/bench-rec", out_dir: str | Path = "eval/results", seed: int = 0) -> dict:
    """Train and score one stage-1 model per (shape, encoder); write ``out_dir/sids_quality.{json,md,png}``."""
    unknown = [s for s in shapes if s not in SHAPES] + [e for e in encoders if e not in ENCODERS]
    if unknown:
        raise ValueError(f"unknown shapes/encoders {unknown}; choose from {list(SHAPES)} and {list(ENCODERS)}")
    dirs, data, _ = prepare_run(dataset, work_dir, seed=seed)
    cache = dirs.root / "sids-quality" / "text_embeddings.npy"  # encoded once, reused by every codebook
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, encode_text(data.catalog.texts()))
    text, ids = np.load(cache), list(data.catalog.ids)
    recipe = align_config(dirs, budget_minutes)
    history, batch = recipe.sequence_max_items - 1, recipe.phase_args("sequence")
    split = leave_one_out(data.interactions, max_history=history)
    exclude = history_exclusion(split)
    valid = sample_users(split.valid, valid_users, seed)
    rows = []
    for encoder in encoders:
        emb, _ = item_embeddings(data, encoder, train_sequences=split.train["item_ids"], seed=seed, progress=False,
                                 encoded={"text": text})
        for shape in shapes:
            levels, size, collision = SHAPES[shape]
            system = f"rq-kmeans-{shape}-{encoder}"
            run_dir = dirs.root / "sids-quality" / system
            cached = run_dir / "row.json"
            if cached.exists():
                rows.append(json.loads(cached.read_text()))
                continue
            book = quantise(emb, ids, levels=levels, codebook_size=size, seed=seed, collision=collision,
                            progress=False)
            book.save(run_dir / "sids")
            config = align_config(dirs, budget_minutes, seed, RECIPE, phase="sequence", item_teacher=0.0,
                                  sids_dir=str(run_dir / "sids"), output_dir=str(run_dir / "align"))
            start = time.perf_counter()
            model_dir = train_align(config)
            train_seconds = time.perf_counter() - start
            scorer = ThinkRecScorer(model_dir, data, book.with_item_inputs(config.item_inputs), prompt="stream",
                                    max_history=history, num_beams=num_beams)
            metrics = evaluate_ranker(scorer.ranker(10, exclude), valid, progress=False)
            selection = json.loads((run_dir / "align" / "sequence" / "selection.json").read_text())
            stats = book.stats()
            row = {"system": system, "valid_ndcg@10": metrics["ndcg@10"], "valid_recall@10": metrics["recall@10"],
                   "collision_rate_before": stats["collision_rate_before"],
                   "collision_rate_after": stats["collision_rate_after"], "codebook_sizes": stats["codebook_sizes"],
                   "mean_items_per_prefix": stats["mean_items_per_prefix"], "collision_strategy": collision,
                   "train_seconds": round(train_seconds, 1),
                   "steps": selection["evaluations"][-1]["step"],
                   "best_step": max(selection["evaluations"], key=lambda e: e["valid_ndcg@10"])["step"]}
            cached.write_text(json.dumps(row))
            rows.append(row)
    payload = {"benchmark": "sids_quality", "dataset": dataset, "items": len(ids), "budget_minutes": budget_minutes,
               "valid_users": len(valid), "num_beams": num_beams, "exclude_history": exclude,
               "recipe": f"{RECIPE.name} (sequence phase)",
               "sequence_batch": {"rows_per_micro_batch": batch.per_device_train_batch_size,
                                  "max_length": batch.max_length,
                                  "gradient_accumulation_steps": batch.gradient_accumulation_steps},
               "rows": rows}
    write_report("sids_quality", payload, out_dir, metric_keys=METRICS)
    return payload
