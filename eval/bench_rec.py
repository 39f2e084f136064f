"""``think-rec bench rec``: think_rec (tiny preset, stage 1) vs Markov, SASRec (BCE, CE) and popularity.

Every trained system gets the same wall-clock training budget; all are scored on the same test users
(leave-one-out, full-catalog ranking). Model selection uses the valid split only.
"""
from __future__ import annotations

import time
from pathlib import Path

from dataclasses import asdict

from think_rec.data.schema import RecDataset
from think_rec.data.split import history_exclusion, leave_one_out, sample_users
from think_rec.decoding.prior import CollaborativePrior
from think_rec.finetune.align import train_align
from think_rec.finetune.align_config import AlignConfig, load_align_config
from think_rec.finetune.run_state import model_fingerprint
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.artefacts import ServedConfig
from think_rec.pipeline import RunDirs, ensure_data, ensure_sids, ensure_tiny

from .markov import MarkovModel
from .published import add_published
from .rec import METRICS, baseline_rows, served_rows, stream_rows
from .report import write_report

DATASETS = {
    "scientific": ("lcrec", "amazon18-scientific"),
    "industrial": ("amazon18", "amazon18-industrial"),
    "ml-100k": ("recbole", "ml-100k"),
    "beauty": ("amazon14", "amazon14-beauty"),  # sequences only: behaviour SIDs (``sid_encoder``)
}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# text + co-occurrence behaviour (eval/results/sids_quality.json: helps 3x64 and 4x32, neutral at 3x256)
SID_ENCODER = "text+behaviour"
RECIPE = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "rec_tiny.yaml"


def align_config(dirs: RunDirs, budget_minutes: float, seed: int = 0, recipe: str | Path = RECIPE,
                 **overrides) -> AlignConfig:
    """The tiny-preset stage-1 recipe (``finetune/configs/rec_tiny.yaml``) pointed at ``dirs`` (``overrides`` win),
    trained from scratch each time (``overwrite``): a budget is measured on a fresh run, never a resumed one."""
    paths = dict(output_dir=str(dirs.align), model=str(dirs.tiny), data_dir=str(dirs.data), sids_dir=str(dirs.sids))
    return load_align_config(recipe, **{**paths, "time_budget_minutes": budget_minutes, "seed": seed,
                                        "overwrite": True, **overrides})


def sid_encoder(data: RecDataset) -> str:
    """``SID_ENCODER``, or ``"behaviour"`` for a catalog without item text (e.g. Beauty's sequence file)."""
    return SID_ENCODER if data.catalog.has_text() else "behaviour"


def prepare_run(dataset: str, work_dir: str | Path, codebook_size: int = 256, seed: int = 0,
                encoder: str | None = None) -> tuple[RunDirs, RecDataset, SIDCodebook]:
    """``work_dir/DATASET`` with its prepared data, semantic IDs (``encoder``, default ``sid_encoder``) and tiny
    preset (each built once)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    source, folder = DATASETS[dataset]
    dirs = RunDirs(Path(work_dir) / dataset)
    data = ensure_data(dirs, source, folder if source == "recbole" else str(SHARED_DATA / folder))
    codebook = ensure_sids(dirs, data, codebook_size=codebook_size, seed=seed, encoder=encoder or sid_encoder(data))
    ensure_tiny(dirs, data, seed=seed)
    return dirs, data, codebook


def run(dataset: str = "scientific", budget_minutes: float = 10.0, eval_users: int | None = None,
        work_dir: str | Path = "runs/bench-rec", out_dir: str | Path = "eval/results", codebook_size: int = 256,
        seed: int = 0, valid_users: int | None = 2000, recipe: str | Path = RECIPE, **overrides) -> dict:
    """Prepare, build SIDs, train think_rec (stage 1, which also writes the served artefact: the prior and its
    weight chosen on ``valid_users``) and the SASRecs within ``budget_minutes`` each, score every system on the
    same test users (all by default), write ``out_dir/DATASET.{json,md,png}``.

    History exclusion is decided from train + valid (``history_exclusion``) and passed to every system. Published
    numbers for the dataset (``published.PUBLISHED``) are added as rows marked ``published``."""
    dirs, data, codebook = prepare_run(dataset, work_dir, codebook_size, seed)
    split = leave_one_out(data.interactions, max_history=load_align_config(recipe).sequence_max_items - 1)
    exclude = history_exclusion(split)
    config = align_config(dirs, budget_minutes, seed, recipe, exclude_history=exclude,
                          prior_valid_users=valid_users or len(split.valid), **overrides)
    start = time.perf_counter()
    model_dir = train_align(config)
    train_seconds = time.perf_counter() - start
    prior = CollaborativePrior.load(model_dir)
    test = sample_users(split.test, eval_users, seed)
    scored = type(split)(split.train, split.valid, test, split.max_history)
    rows = served_rows(model_dir, data, codebook, test, train_seconds=train_seconds)
    rows += stream_rows(model_dir, data, codebook, scored, prior, train_seconds=train_seconds,
                        stream_history=config.sequence_max_items - 1, exclude_history=exclude,
                        valid_users=valid_users, seed=seed)
    rows += baseline_rows(data, scored, MarkovModel(split.train["item_ids"]), budget_seconds=60 * budget_minutes,
                          exclude_history=exclude, prior=prior, valid_users=valid_users, seed=seed)
    payload = {"benchmark": "rec", "dataset": dataset, "budget_minutes": budget_minutes, "eval_users": len(test),
               "exclude_history": exclude, "model_fingerprint": model_fingerprint(model_dir),
               "served": asdict(ServedConfig.load(model_dir)), "prior_weight": prior.weight,
               "prior_selection": prior.selection, "recipe": str(Path(recipe).name),
               "codebook": codebook.stats(), "rows": rows}
    payload = add_published(payload)
    write_report(dataset, payload, out_dir, metric_keys=METRICS)
    return payload
