"""The served artefact of a trained model: its collaborative prior and served configuration, chosen on valid users.

``write_served`` counts the item transitions of the training split (``CollaborativePrior``; how far and in which
direction it counts, ``MarkovConfig``, is the one of ``MARKOV_CONFIGS`` that ranks a seeded sample of valid users
best on its own), ranks that sample once with the served prompt and the served ranking
(``think_rec.decoding.ranking``), picks the prior weight (and, for a model with item tokens, the item head's
weight) with the best valid NDCG@10 (ties: the smaller weights), and saves ``prior.json`` and ``served.json``
beside the merged model. With stage 1's ``heldout_share`` the valid users are the ones whose last training item it
withheld (their histories end as test histories do: in-sample users over-trust a model that memorises them); the
weights are chosen with the counts stage 1 saw, then the saved prior counts the whole training split. Stage 1
calls it when its last phase has trained the chat prompt; ``think-rec prior`` does it for an existing model. Stage 2
adds its thinking ranking (``write_think``): after the rationale or after an empty think, and the weight of the
rationale's claims, chosen on valid users. Test users are never read.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from think_rec.data.schema import RecDataset, column
from think_rec.data.split import history_exclusion, hold_out, leave_one_out, sample_users
from think_rec.decoding.prior import (ITEM_WEIGHTS, MARKOV_CONFIGS, PRIOR_FILE, PRIOR_WEIGHTS, CollaborativePrior,
                                      MarkovConfig, MarkovModel)
from think_rec.decoding.ranking import Candidates, Ranked, candidates, fuse, fusion_weights
from think_rec.eval.markov import markov_ranker
from think_rec.eval.metrics import aggregate
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.artefacts import SERVED_FILE, RecModel, ServedConfig
from think_rec.prompts import served_prompt

from .run_state import data_fingerprint


def served_candidates(rec: RecModel, histories: Sequence[Sequence[str]], prior: CollaborativePrior | None,
                      served: ServedConfig, batch_size: int = 64) -> list[Candidates]:
    """The served ranking's candidates for ``histories`` (served prompt, beams, the prior's items, bans)."""
    tok = getattr(rec.processor, "tokenizer", rec.processor)
    items = rec.dataset.catalog
    codebook = served.history_codebook(rec.codebook)
    prompts = [served_prompt(tok, h, items, codebook, served.max_history) for h in histories]
    banned = [set(h) if served.exclude_history else set() for h in histories]
    return candidates(rec.model, rec.processor, prompts, [list(h) for h in histories], rec.trie, prior,
                      num_beams=served.num_beams, banned=banned, batch_size=batch_size)


def served_ranking(rec: RecModel, histories: Sequence[Sequence[str]], k: int = 10,
                   batch_size: int = 64) -> list[Ranked]:
    """What ``think-rec serve`` answers for ``histories`` (no dialogue): the served ranking at the model's weights."""
    weight, item_weight = fusion_weights(rec.prior)
    cands = served_candidates(rec, histories, rec.prior, rec.served, batch_size)
    return [fuse(c, weight, k, item_weight) for c in cands]


def choose_markov(train_sequences: Sequence[Sequence[str]], histories: Sequence[Sequence[str]],
                  targets: Sequence[str], exclude_history: bool,
                  configs: Sequence[MarkovConfig] = MARKOV_CONFIGS) -> tuple[MarkovModel, dict[str, float]]:
    """The prior's counts under the config whose ranking alone has the best NDCG@10 on these (valid) users (ties:
    the earlier config), and every config's NDCG@10 keyed by its fields."""
    best, best_score, scores = None, -1.0, {}
    for config in configs:
        markov = MarkovModel(train_sequences, config)
        scores[config.key] = aggregate(markov_ranker(markov, 10, exclude_history)(histories), targets,
                                       (10,))["ndcg@10"]
        if scores[config.key] > best_score:
            best, best_score = markov, scores[config.key]
    return best, scores


def choose_weights(cands: Sequence[Candidates], targets: Sequence[str], weights: Sequence[float] = PRIOR_WEIGHTS,
                   item_weights: Sequence[float] = ITEM_WEIGHTS) -> tuple[tuple[float, float], dict]:
    """The ``(weight, item_weight)`` pair with the best NDCG@10 of ``fuse`` (ties: the smaller weights) and every
    pair's NDCG@10; item weights only when the candidates carry item-head scores."""
    grid = [(w, iw) for w in weights for iw in (item_weights if any(c.items for c in cands) else (0.0,))]
    scores = {(w, iw): aggregate([[i for i, _ in fuse(c, w, 10, iw)] for c in cands], targets, (10,))["ndcg@10"]
              for w, iw in grid}
    return max(scores, key=lambda p: (scores[p], -p[0], -p[1])), scores


def choose_weight(cands: Sequence[Candidates], targets: Sequence[str],
                  weights: Sequence[float] = PRIOR_WEIGHTS) -> tuple[float, dict[float, float]]:
    """The prior weight alone (item head off): the best weight and every weight's NDCG@10."""
    (weight, _), scores = choose_weights(cands, targets, weights, (0.0,))
    return weight, {w: s for (w, _), s in scores.items()}


def selection_record(best: tuple[float, float], scores: dict) -> dict[str, dict[float, float]]:
    """Valid NDCG@10 along each weight through the chosen pair, and the item weight of the model alone."""
    w, iw = best
    out = {"valid_ndcg@10_by_weight": {a: s for (a, b), s in scores.items() if b == iw}}
    if any(b for _, b in scores):
        out["valid_ndcg@10_by_item_weight"] = {b: s for (a, b), s in scores.items() if a == w}
        out["item_weight_alone"] = model_alone(scores)
    return out


def model_alone(scores: dict) -> float:
    """The item weight with the best valid NDCG@10 without the prior (weight 0): the model's own ranking."""
    alone = {b: s for (a, b), s in scores.items() if a == 0}
    return max(alone, key=lambda b: (alone[b], -b))


def write_served(model_dir: str | Path, data_dir: str | Path, sids: str | Path | SIDCodebook, *, max_history: int,
                 num_beams: int = 30, valid_users: int | None = 2000, exclude_history: bool | None = None,
                 prior_top: int = 30, seed: int = 0, dtype: str = "float32", item_inputs: bool | None = None,
                 history_titles: bool | None = None, heldout_share: float = 0.0, heldout_min_users: int = 1,
                 **notes: Any) -> ServedConfig:
    """Build the prior from the training split, choose its weight on valid users (with ``heldout_share``, on the users
    whose last training item stage 1 withheld, ``think_rec.data.split.hold_out`` with ``heldout_min_users`` as stage 1
    called it; the prior is then recounted on the whole training split), write ``prior.json`` and ``served.json`` into
    ``model_dir``. ``exclude_history`` None: decided from train + valid; ``item_inputs`` and ``history_titles`` None:
    as the model's ``served.json`` records (a model reads histories as it was trained to)."""
    recorded = ServedConfig.load(model_dir, warn=False)
    item_inputs = recorded.item_inputs if item_inputs is None else item_inputs
    history_titles = recorded.history_titles if history_titles is None else history_titles
    data = RecDataset.load(data_dir)
    full = leave_one_out(data.interactions, max_history=max_history)
    split = hold_out(full, heldout_share, seed, heldout_min_users)
    served = ServedConfig(max_history=max_history, num_beams=num_beams, dtype=dtype,
                          exclude_history=history_exclusion(split) if exclude_history is None else exclude_history,
                          item_inputs=item_inputs, history_titles=history_titles, notes=notes)
    valid = split.selection_users(valid_users, seed)
    markov, by_config = choose_markov(column(split.train, "item_ids"), column(valid, "history"),
                                      column(valid, "target"), served.exclude_history)
    prior = CollaborativePrior(markov, top=prior_top, data_fingerprint=data_fingerprint(data_dir))
    rec = RecModel.load(model_dir, sids, data, warn=False)  # served.json and the prior are what is chosen here
    cands = served_candidates(rec, column(valid, "history"), prior, served)
    best, scores = choose_weights(cands, column(valid, "target"))
    if split.heldout:  # chosen with the counts stage 1 saw; served with every training item counted
        prior.markov = MarkovModel(column(full.train, "item_ids"), markov.config)
    prior.weight, prior.item_weight = best
    prior.selection = {"valid_users": len(valid), "heldout_users": len(split.heldout), "seed": seed,
                       "markov_config": asdict(markov.config), "valid_ndcg@10_by_markov_config": by_config,
                       **selection_record(best, scores)}
    prior.save(model_dir)
    served.save(model_dir)
    return served


def write_think(model_dir: str | Path, data_dir: str | Path, sids: str | Path | SIDCodebook, *, valid_users: int,
                max_think_tokens: int = 64, min_gain_se: float = 2.0, rationale_samples: int = 1,
                seed: int = 0) -> ServedConfig:
    """Choose the thinking ranking of a stage-2 model on valid users (``eval.reasoning.choose_think``: after the
    rationale or after an empty think, and how much the items follow its claims), with ``rationale_samples``
    rationales drawn per user as they will be served, and record both in ``served.json``."""
    from think_rec.eval.reasoning import choose_think

    data = RecDataset.load(data_dir)
    valid = sample_users(leave_one_out(data.interactions).valid, valid_users, seed)
    rec = RecModel.load(model_dir, sids, data)
    rec.served.rationale_samples = rationale_samples
    choice, record = choose_think(rec, valid, min_gain_se=min_gain_se, max_think_tokens=max_think_tokens)
    rec.served.think_ranking, rec.served.follow_weight = choice
    rec.served.notes["think_selection"] = {**record, "seed": seed, "max_think_tokens": max_think_tokens}
    rec.served.save(model_dir)
    return rec.served


def inherit_served(base: str | Path, final: str | Path) -> Path:
    """Stages 2 and 3 keep the served artefact of the model they started from (its prior, weight and settings)."""
    for name in (PRIOR_FILE, SERVED_FILE):
        if (Path(base) / name).is_file():
            shutil.copyfile(Path(base) / name, Path(final) / name)
    return Path(final)
