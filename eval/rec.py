"""Recommendation evaluation of think_rec beside SASRec and popularity, on one leave-one-out split."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from think_rec.data.schema import RecDataset
from think_rec.data.split import LeaveOneOut
from think_rec.decoding import SIDTrie
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.loading import load_model
from think_rec.prompts import render_recommend_prompt

from .evaluate import RankFn, evaluate_ranker, generative_ranker
from .popularity import popularity_ranker
from .sasrec import SASRecConfig, sasrec_ranker, train_sasrec

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def think_rec_ranker(model_dir: str | Path, dataset: RecDataset, codebook: SIDCodebook, *,
                     max_history: int = 20, k: int = 10, num_beams: int | None = None) -> RankFn:
    """Constrained beam search of a trained think_rec model over the whole catalog's SID trie."""
    model, processor = load_model(model_dir)
    model.eval()
    trie = SIDTrie.from_codebook(codebook, processor)
    items = {row["item_id"]: row for row in dataset.catalog.items.to_list()}

    def prompt(history: list[str]) -> str:
        return render_recommend_prompt(history[-max_history:], items, codebook, processor, with_images=False).text

    return generative_ranker(model, processor, trie, prompt, k=k, num_beams=num_beams)


def evaluate_systems(model_dir: str | Path, dataset: RecDataset, codebook: SIDCodebook, split: LeaveOneOut, *,
                     think_rec_train_seconds: float, budget_seconds: float | None, max_history: int = 20,
                     num_beams: int = 10, batch_size: int = 32, sasrec: SASRecConfig | None = None) -> list[dict]:
    """Rows for think_rec, SASRec (trained here within ``budget_seconds``) and popularity on ``split.test``."""
    rows: list[dict[str, Any]] = []
    rank = think_rec_ranker(model_dir, dataset, codebook, max_history=max_history, num_beams=num_beams)
    start = time.perf_counter()
    metrics = evaluate_ranker(rank, split.test, batch_size=batch_size, desc="think_rec")
    rows.append({"system": "think_rec", **metrics, "train_seconds": round(think_rec_train_seconds, 1),
                 "eval_seconds": round(time.perf_counter() - start, 1)})

    start = time.perf_counter()
    model = train_sasrec(split, dataset.catalog.ids, sasrec, time_budget_seconds=budget_seconds)
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        metrics = evaluate_ranker(sasrec_ranker(model), split.test, desc="sasrec")
    rows.append({"system": "sasrec", **metrics, "train_seconds": round(train_seconds, 1)})

    metrics = evaluate_ranker(popularity_ranker(split.train["item_ids"]), split.test, desc="popularity")
    rows.append({"system": "popularity", **metrics, "train_seconds": 0.0})
    return rows
