"""The served artefact of a trained model: its collaborative prior and served configuration, chosen on valid users.

``write_served`` counts the item transitions of the training split (``CollaborativePrior``), ranks a seeded
sample of valid users once with the served prompt and the served ranking (``think_rec.decoding.ranking``),
picks the prior weight with the best valid NDCG@10 (ties: the smaller weight), and saves ``prior.json`` and
``served.json`` beside the merged model. Stage 1 calls it when its last phase has trained the chat prompt;
``think-rec prior`` does it for an existing model. Test users are never read.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from think_rec.data.schema import RecDataset, column
from think_rec.data.split import history_exclusion, leave_one_out, sample_users
from think_rec.decoding.prior import PRIOR_FILE, PRIOR_WEIGHTS, CollaborativePrior, MarkovModel
from think_rec.decoding.ranking import Candidates, candidates, fuse
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
    prompts = [served_prompt(tok, h, items, rec.codebook, served.max_history) for h in histories]
    banned = [set(h) if served.exclude_history else set() for h in histories]
    return candidates(rec.model, rec.processor, prompts, [list(h) for h in histories], rec.trie, prior,
                      num_beams=served.num_beams, banned=banned, batch_size=batch_size)


def choose_weight(cands: Sequence[Candidates], targets: Sequence[str],
                  weights: Sequence[float] = PRIOR_WEIGHTS) -> tuple[float, dict[float, float]]:
    """The weight with the best NDCG@10 of ``fuse`` (ties: the smaller weight) and every weight's NDCG@10."""
    scores = {w: aggregate([[i for i, _ in fuse(c, w, 10)] for c in cands], targets, (10,))["ndcg@10"]
              for w in weights}
    return max(scores, key=lambda w: (scores[w], -w)), scores


def write_served(model_dir: str | Path, data_dir: str | Path, sids: str | Path | SIDCodebook, *, max_history: int,
                 num_beams: int = 30, valid_users: int | None = 2000, exclude_history: bool | None = None,
                 prior_top: int = 30, seed: int = 0, dtype: str = "float32", **notes: Any) -> ServedConfig:
    """Build the prior from the training split, choose its weight on valid users, write ``prior.json`` and
    ``served.json`` into ``model_dir``. ``exclude_history`` None: decided from train + valid."""
    data = RecDataset.load(data_dir)
    split = leave_one_out(data.interactions, max_history=max_history)
    served = ServedConfig(max_history=max_history, num_beams=num_beams, dtype=dtype,
                          exclude_history=history_exclusion(split) if exclude_history is None else exclude_history,
                          notes=notes)
    prior = CollaborativePrior(MarkovModel(column(split.train, "item_ids")), top=prior_top,
                               data_fingerprint=data_fingerprint(data_dir))
    valid = sample_users(split.valid, valid_users, seed)
    rec = RecModel.load(model_dir, sids, data)
    cands = served_candidates(rec, column(valid, "history"), prior, served)
    prior.weight, by_weight = choose_weight(cands, column(valid, "target"))
    prior.selection = {"valid_users": len(valid), "seed": seed, "valid_ndcg@10_by_weight": by_weight}
    prior.save(model_dir)
    served.save(model_dir)
    return served


def inherit_served(base: str | Path, final: str | Path) -> Path:
    """Stages 2 and 3 keep the served artefact of the model they started from (its prior, weight and settings)."""
    for name in (PRIOR_FILE, SERVED_FILE):
        if (Path(base) / name).is_file():
            shutil.copyfile(Path(base) / name, Path(final) / name)
    return Path(final)
