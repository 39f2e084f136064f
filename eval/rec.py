"""Recommendation evaluation of think_rec beside Markov, SASRec (BCE and CE) and popularity on one split.

Every think_rec row ranks through ``think_rec.decoding.ranking`` (the function the engines call): candidates are
the trie beams plus the collaborative prior's top items, scored by the model's log-probability +
``weight * log1p(transition score)``; weight 0 is the beam search alone. ``served`` is what ``think-rec serve``
answers: the served prompt, history length, beam width and prior weight of the model's ``served.json`` /
``prior.json`` (chosen on valid users when stage 1 ended); ``served_model`` the same without the prior. The stream
rows score the sequence phase's model on the bare SID stream (``think_rec``: with the prior, its weight chosen
on valid here; ``think_rec_stream``: alone). ``sasrec_ce_prior`` fuses SASRec-CE's log-softmax with the same prior
by the same rule and valid grid, so the model's own share of the gain is visible; ``prior`` ranks by the prior's
counts alone (its config chosen on valid: ``markov`` is the first-order baseline).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from think_rec.data.schema import RecDataset, column
from think_rec.data.split import LeaveOneOut, sample_users
from think_rec.decoding.prior import CollaborativePrior
from think_rec.decoding.ranking import Candidates, candidates, extra_items, fuse, fusion_weights
from think_rec.decoding.search import beam_search
from think_rec.finetune.align import phase_prompt
from think_rec.finetune.served import (choose_weight, choose_weights, model_alone, selection_record,
                                       served_candidates)
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.artefacts import RecModel, model_codebook

from .evaluate import RankFn
from .markov import MarkovModel, markov_ranker
from .metrics import ranked_metrics
from .popularity import popularity_ranker
from .sasrec import SASRec, SASRecConfig, score_all, sasrec_ranker, train_sasrec

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
PROMPTS = {"stream": "sequence", "chat": "multitask"}  # prompt kind -> the stage-1 phase that trains it


class ThinkRecScorer:
    """A trained think_rec model with its trie and prompt: beams and served-ranking candidates for histories.
    Histories carry item tokens when ``codebook`` or the model's ``served.json`` says so (``item_inputs``), and
    titles unless either says not (``history_titles``). ``warn``: about a model without ``served.json`` or prior (an
    earlier phase's model: ``codebook`` then carries the final model's history settings)."""

    def __init__(self, model_dir: str | Path, dataset: RecDataset, codebook: SIDCodebook, *, prompt: str = "chat",
                 max_history: int = 20, num_beams: int = 20, batch_size: int = 64, warn: bool = True):
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {list(PROMPTS)}, got {prompt!r}")
        rec = RecModel.load(model_dir, codebook, warn=warn)
        self.model, self.processor, self.trie = rec.model, rec.processor, rec.trie
        codebook = codebook.with_item_inputs(codebook.item_inputs or rec.served.item_inputs).with_history_titles(
            codebook.history_titles and rec.served.history_titles)
        self.prompt = phase_prompt(PROMPTS[prompt], dataset, codebook, self.processor, max_history)
        self.num_beams, self.batch_size = num_beams, batch_size

    def beams(self, histories: Sequence[list[str]], exclude_history: bool, k: int | None = None) -> list[list]:
        return beam_search(self.model, self.processor, [self.prompt(h) for h in histories], self.trie,
                           num_beams=self.num_beams, k=k or self.num_beams, batch_size=self.batch_size,
                           exclude=[set(h) for h in histories] if exclude_history else None)

    def candidates(self, histories: Sequence[list[str]], prior: CollaborativePrior | None,
                   exclude_history: bool) -> list[Candidates]:
        """The served ranking's candidates of this model and prompt (``decoding.ranking.candidates``)."""
        return candidates(self.model, self.processor, [self.prompt(h) for h in histories], histories, self.trie,
                          prior, num_beams=self.num_beams, batch_size=self.batch_size,
                          banned=[set(h) if exclude_history else set() for h in histories])

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


def fused_row(system: str, cands: Sequence[Candidates], weight: float, targets: Sequence[str], seconds: float,
              train_seconds: float, item_weight: float = 0.0, **extra: Any) -> dict[str, Any]:
    """One row: ``fuse(weight, item_weight)`` of each user's candidates, scored against ``targets``."""
    rankings = [[i for i, _ in fuse(c, weight, 10, item_weight)] for c in cands]
    return {"system": system, **ranked_metrics(rankings, targets, METRICS), "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(seconds, 1), "prior_weight": weight, "item_weight": item_weight, **extra}


def served_rows(model_dir: str | Path, dataset: RecDataset, codebook: SIDCodebook, test, *,
                train_seconds: float) -> list[dict[str, Any]]:
    """``served`` (what ``think-rec serve`` answers: served prompt + prior and item head at their recorded
    weights), ``served_model`` (the model alone: prior weight 0, the item weight valid chose for that) and, for a
    model with item tokens, ``served_sid`` (the SID log-probabilities alone), from one pass of the served ranking."""
    rec = RecModel.load(model_dir, codebook, dataset)
    start = time.perf_counter()
    cands = served_candidates(rec, column(test, "history"), rec.prior, rec.served)
    seconds = time.perf_counter() - start
    targets = column(test, "target")
    prior = rec.prior
    weight, item_weight = fusion_weights(prior)
    alone = prior.selection.get("item_weight_alone", 0.0) if prior is not None else 0.0
    common = dict(prompt=rec.served.prompt, model=Path(model_dir).name)
    rows = [fused_row("served", cands, weight, targets, seconds, train_seconds, item_weight, **common),
            fused_row("served_model", cands, 0.0, targets, seconds, train_seconds, alone, **common)]
    if rec.trie.item_token_ids is not None:
        rows.append(fused_row("served_sid", cands, 0.0, targets, seconds, train_seconds, **common))
    return rows


def stream_rows(model_dir: str | Path, dataset: RecDataset, codebook: SIDCodebook, split: LeaveOneOut,
                prior: CollaborativePrior, *, train_seconds: float, stream_history: int, num_beams: int = 30,
                exclude_history: bool = False, valid_users: int | None = None,
                seed: int = 0) -> list[dict[str, Any]]:
    """``think_rec`` (the bare SID stream + the prior, its weight chosen on valid) and ``think_rec_stream`` (the
    stream alone), scoring the sequence phase's model (``../sequence/merged`` beside ``model_dir``) when the run
    has one, else ``model_dir``."""
    stream_dir = Path(model_dir).parent / "sequence" / "merged"
    stream_dir = stream_dir if (stream_dir / "config.json").exists() else Path(model_dir)
    codebook = model_codebook(codebook, model_dir)  # the sequence phase read histories as the final model does
    scorer = ThinkRecScorer(stream_dir, dataset, codebook, prompt="stream", max_history=stream_history,
                            num_beams=num_beams, warn=stream_dir == Path(model_dir))
    valid = sample_users(split.valid, valid_users, seed)
    best, scores = choose_weights(scorer.candidates(column(valid, "history"), prior, exclude_history),
                                  column(valid, "target"))
    start = time.perf_counter()
    cands = scorer.candidates(column(split.test, "history"), prior, exclude_history)
    seconds, targets = time.perf_counter() - start, column(split.test, "target")
    by_weight = selection_record(best, scores)["valid_ndcg@10_by_weight"]
    return [fused_row("think_rec", cands, best[0], targets, seconds, train_seconds, best[1], prompt="stream",
                      model=stream_dir.name, valid_ndcg10_by_prior_weight=by_weight),
            fused_row("think_rec_stream", cands, 0.0, targets, seconds, train_seconds, model_alone(scores),
                      prompt="stream", model=stream_dir.name)]


def sasrec_candidates(model: SASRec, histories: Sequence[Sequence[str]], prior: CollaborativePrior,
                      exclude_history: bool, top: int = 30) -> list[Candidates]:
    """SASRec's top items and the prior's, each with SASRec's log-softmax score: ``fuse``'s input."""
    logprobs = score_all(model, histories).float().log_softmax(-1)
    index = {item: i for i, item in enumerate(model.item_ids)}
    out = []
    for row, h in zip(logprobs, histories):
        banned = set(h) if exclude_history else set()
        if banned:
            row[[index[i] for i in banned if i in index]] = float("-inf")
        values, cols = row.topk(min(top, len(row)))
        beams = [(model.item_ids[c], v) for c, v in zip(cols.tolist(), values.tolist()) if v > float("-inf")]
        extra = [i for i in extra_items(prior, h, beams, banned) if i in index]
        out.append(Candidates(beams, [(i, row[index[i]].item()) for i in extra], prior.markov.scores(h)))
    return out


def _timed_row(system: str, rank: RankFn, examples, train_seconds: float, **extra: Any) -> dict[str, Any]:
    start = time.perf_counter()
    histories = column(examples, "history")
    rankings = [r for s in tqdm(range(0, len(histories), 256), desc=system) for r in rank(histories[s:s + 256])]
    return {"system": system, **ranked_metrics(rankings, column(examples, "target"), METRICS),
            "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - start, 1), **extra}


def baseline_rows(dataset: RecDataset, split: LeaveOneOut, markov: MarkovModel, *, budget_seconds: float | None,
                  exclude_history: bool = False, prior: CollaborativePrior | None = None,
                  valid_users: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Markov, SASRec (BCE and CE, each trained within ``budget_seconds`` with valid early stopping), popularity,
    and with a ``prior``: ``prior`` (its counts alone, as the served ranking's config counts them) and
    ``sasrec_ce_prior`` (its weight chosen on ``valid_users``)."""
    rows = [_timed_row("markov", markov_ranker(markov, 10, exclude_history), split.test, 0.0)]
    if prior is not None:
        rows.append(_timed_row("prior", markov_ranker(prior.markov, 10, exclude_history), split.test, 0.0,
                               markov_config=asdict(prior.markov.config)))
    for system, loss in (("sasrec", "bce"), ("sasrec_ce", "ce")):
        start = time.perf_counter()
        model = train_sasrec(split, dataset.catalog.ids, SASRecConfig(loss=loss), time_budget_seconds=budget_seconds,
                             exclude_history=exclude_history)
        train_seconds = time.perf_counter() - start
        with torch.no_grad():
            rows.append(_timed_row(system, sasrec_ranker(model, 10, exclude_history), split.test, train_seconds,
                                   best_valid_ndcg10=round(model.best_valid_ndcg10, 4)))
            if loss == "ce" and prior is not None:
                valid = sample_users(split.valid, valid_users, seed)
                weight, by_weight = choose_weight(
                    sasrec_candidates(model, column(valid, "history"), prior, exclude_history), column(valid, "target"))
                start = time.perf_counter()
                cands = sasrec_candidates(model, column(split.test, "history"), prior, exclude_history)
                rows.append(fused_row("sasrec_ce_prior", cands, weight, column(split.test, "target"),
                                      time.perf_counter() - start, train_seconds,
                                      valid_ndcg10_by_prior_weight=by_weight))
    rows.append(_timed_row("popularity", popularity_ranker(column(split.train, "item_ids"), 10, exclude_history),
                           split.test, 0.0))
    return rows
