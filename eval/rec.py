"""Recommendation evaluation of think_rec beside Markov, SASRec (BCE and CE) and popularity on one split.

think_rec ranks by trie-constrained beam search (prompt encoded once, ``think_rec.decoding.search``) over
either prompt it was trained on: the bare SID stream or the served chat prompt. Its main row adds a
collaborative prior: the candidates are the model's beams plus the item-transition model's top items,
scored by the model's log-probability + ``prior_weight * log1p(transition score)``, the weight picked on
the valid split (``prior_weight = 0`` is the model alone, re-ranking its own beams).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from think_rec.data.schema import RecDataset, column
from think_rec.data.split import LeaveOneOut, sample_users
from think_rec.decoding.search import beam_search, score_items
from think_rec.finetune.align import phase_prompt
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.artefacts import RecModel

from .evaluate import RankFn, evaluate_ranker
from .markov import MarkovModel, markov_ranker
from .metrics import aggregate
from .popularity import popularity_ranker
from .sasrec import SASRecConfig, sasrec_ranker, train_sasrec

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
PROMPTS = {"stream": "sequence", "chat": "multitask"}  # prompt kind -> the stage-1 phase that trains it
PRIOR_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class ThinkRecScorer:
    """A trained think_rec model with its trie and prompt: beams and candidate scores for histories."""

    def __init__(self, model_dir: str | Path, dataset: RecDataset, codebook: SIDCodebook, *, prompt: str = "chat",
                 max_history: int = 20, num_beams: int = 20, batch_size: int = 64):
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {list(PROMPTS)}, got {prompt!r}")
        rec = RecModel.load(model_dir, codebook)
        self.model, self.processor, self.trie = rec.model, rec.processor, rec.trie
        self.prompt = phase_prompt(PROMPTS[prompt], dataset, codebook, self.processor, max_history)
        self.num_beams, self.batch_size = num_beams, batch_size

    def beams(self, histories: Sequence[list[str]], exclude_history: bool, k: int | None = None) -> list[list]:
        return beam_search(self.model, self.processor, [self.prompt(h) for h in histories], self.trie,
                           num_beams=self.num_beams, k=k or self.num_beams, batch_size=self.batch_size,
                           exclude=[set(h) for h in histories] if exclude_history else None)

    def score(self, histories: Sequence[list[str]], candidates: Sequence[list[str]]) -> list[list[float]]:
        return score_items(self.model, self.processor, [self.prompt(h) for h in histories], candidates, self.trie,
                           batch_size=self.batch_size)

    def ranker(self, k: int = 10, exclude_history: bool = False) -> RankFn:
        """Beam search alone."""
        return lambda histories: [[item for item, _ in row]
                                  for row in self.beams(histories, exclude_history, k)]


def think_rec_ranker(model_dir: str | Path, dataset: RecDataset, codebook: SIDCodebook, *, prompt: str = "chat",
                     max_history: int = 20, k: int = 10, num_beams: int | None = None,
                     exclude_history: bool = False) -> RankFn:
    """Constrained beam search of a trained think_rec model over the whole catalog's SID trie."""
    scorer = ThinkRecScorer(model_dir, dataset, codebook, prompt=prompt, max_history=max_history,
                            num_beams=num_beams or k)
    return scorer.ranker(k, exclude_history)


def prior_fused_rankings(scorer: ThinkRecScorer, markov: MarkovModel, histories: Sequence[list[str]], *,
                         weights: Sequence[float] = PRIOR_WEIGHTS, markov_top: int = 30, k: int = 10,
                         exclude_history: bool = False) -> dict[float, list[list[str]]]:
    """For each prior weight, the top-``k`` of beams + Markov's top items by log-prob + weight * log1p(markov)."""
    beams = scorer.beams(histories, exclude_history)
    extra, prior = [], []
    for h, row in zip(histories, beams):
        have = {item for item, _ in row}
        extra.append([i for i in markov.rank(h, markov_top, set(h) if exclude_history else None) if i not in have])
        prior.append(markov.scores(h))
    extra_scores = scorer.score(histories, extra)
    out: dict[float, list[list[str]]] = {w: [] for w in weights}
    for row, more, more_scores, p in zip(beams, extra, extra_scores, prior):
        cands = row + list(zip(more, more_scores))
        for w in weights:
            ranked = sorted(cands, key=lambda c: -(c[1] + w * math.log1p(p.get(c[0], 0.0))))
            out[w].append([item for item, _ in ranked[:k]])
    return out


def select_prior_weight(scorer: ThinkRecScorer, markov: MarkovModel, valid, **kw) -> tuple[float, dict]:
    """The prior weight with the best NDCG@10 on ``valid`` (ties: the smaller weight), and every weight's score."""
    rankings = prior_fused_rankings(scorer, markov, column(valid, "history"), **kw)
    targets = column(valid, "target")
    scores = {w: aggregate(r, targets, (10,))["ndcg@10"] for w, r in rankings.items()}
    return max(scores, key=lambda w: (scores[w], -w)), scores


def _timed_row(system: str, rank: RankFn, examples, train_seconds: float, **extra: Any) -> dict[str, Any]:
    start = time.perf_counter()
    metrics = evaluate_ranker(rank, examples, desc=system)
    return {"system": system, **{m: metrics[m] for m in METRICS}, "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(time.perf_counter() - start, 1), **extra}


def think_rec_rows(model_dir: str | Path, dataset: RecDataset, codebook: SIDCodebook, split: LeaveOneOut,
                   markov: MarkovModel, *, train_seconds: float, max_history: int, stream_history: int,
                   num_beams: int = 30, exclude_history: bool = False, valid_users: int | None = None,
                   seed: int = 0) -> list[dict[str, Any]]:
    """``think_rec`` (stream prompt + collaborative prior, weight chosen on valid), ``think_rec_stream`` (the
    model alone on the bare SID stream) and ``think_rec_chat`` (the model alone on the served chat prompt).
    The stream rows score the sequence phase's model (``../sequence/merged`` beside ``model_dir``) when the
    run has one, the chat row the final model."""
    stream_dir = Path(model_dir).parent / "sequence" / "merged"
    stream_dir = stream_dir if (stream_dir / "config.json").exists() else Path(model_dir)
    stream = ThinkRecScorer(stream_dir, dataset, codebook, prompt="stream", max_history=stream_history,
                            num_beams=num_beams)
    weight, by_weight = select_prior_weight(stream, markov, sample_users(split.valid, valid_users, seed),
                                            exclude_history=exclude_history)
    start = time.perf_counter()
    test_histories = column(split.test, "history")
    fused = prior_fused_rankings(stream, markov, test_histories, weights=(weight,), exclude_history=exclude_history)
    metrics = aggregate(fused[weight], column(split.test, "target"))
    rows = [{"system": "think_rec", **{m: metrics[m] for m in METRICS}, "train_seconds": round(train_seconds, 1),
             "eval_seconds": round(time.perf_counter() - start, 1), "prompt": "stream", "model": stream_dir.name,
             "prior_weight": weight, "valid_ndcg@10_by_prior_weight": by_weight}]
    rows.append(_timed_row("think_rec_stream", stream.ranker(10, exclude_history), split.test, train_seconds,
                           prompt="stream", model=stream_dir.name))
    chat = ThinkRecScorer(model_dir, dataset, codebook, prompt="chat", max_history=max_history, num_beams=num_beams)
    rows.append(_timed_row("think_rec_chat", chat.ranker(10, exclude_history), split.test, train_seconds,
                           prompt="chat", model=Path(model_dir).name))
    return rows


def baseline_rows(dataset: RecDataset, split: LeaveOneOut, markov: MarkovModel, *, budget_seconds: float | None,
                  exclude_history: bool = False) -> list[dict[str, Any]]:
    """Markov, SASRec (BCE and CE, each trained within ``budget_seconds`` with valid early stopping), popularity."""
    rows = [_timed_row("markov", markov_ranker(markov, 10, exclude_history), split.test, 0.0)]
    for system, loss in (("sasrec", "bce"), ("sasrec_ce", "ce")):
        start = time.perf_counter()
        model = train_sasrec(split, dataset.catalog.ids, SASRecConfig(loss=loss), time_budget_seconds=budget_seconds,
                             exclude_history=exclude_history)
        train_seconds = time.perf_counter() - start
        with torch.no_grad():
            rows.append(_timed_row(system, sasrec_ranker(model, 10, exclude_history), split.test, train_seconds,
                                   best_valid_ndcg10=round(model.best_valid_ndcg10, 4)))
    rows.append(_timed_row("popularity", popularity_ranker(column(split.train, "item_ids"), 10, exclude_history),
                           split.test, 0.0))
    return rows
