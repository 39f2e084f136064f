"""``think-rec bench rec``: think_rec (tiny preset, stage 1) vs SASRec vs popularity, one run, one budget.

Both trained systems get the same wall-clock training budget; all are scored on the same test users
(leave-one-out, full-catalog ranking). Model selection uses the valid split only.
"""
from __future__ import annotations

import time
from pathlib import Path

from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out
from think_rec.finetune.align import train_align
from think_rec.finetune.config import AlignConfig
from think_rec.itemic.codebook import SIDCodebook
from think_rec.pipeline import RunDirs, ensure_data, ensure_sids, ensure_tiny

from .evaluate import sample_users
from .rec import METRICS, evaluate_systems
from .report import write_report

DATASETS = {
    "scientific": ("lcrec", "amazon18-scientific"),
    "industrial": ("amazon18", "amazon18-industrial"),
    "ml-100k": ("recbole", "ml-100k"),
}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def align_config(dirs: RunDirs, budget_minutes: float, max_history: int, seed: int = 0,
                 num_examples: int | None = None) -> AlignConfig:
    """The tiny-preset stage-1 recipe used by the benchmark and the quickstart."""
    return AlignConfig(output_dir=str(dirs.align), model=str(dirs.tiny), data_dir=str(dirs.data),
                       sids_dir=str(dirs.sids), max_history=max_history, with_images=True, max_images=2,
                       warmup_learning_rate=5e-3, learning_rate=3e-3, lr_scheduler_type="constant",
                       per_device_train_batch_size=32, lora_r=16, lora_alpha=32, num_train_epochs=1,
                       warmup_budget_fraction=0.2, time_budget_minutes=budget_minutes, save_steps=50,
                       logging_steps=10, max_length=1024, num_examples=num_examples, seed=seed)


def prepare_run(dataset: str, work_dir: str | Path, codebook_size: int = 256,
                seed: int = 0) -> tuple[RunDirs, RecDataset, SIDCodebook]:
    """``work_dir/DATASET`` with its prepared data, semantic IDs and tiny preset (each built once)."""
    source, folder = DATASETS[dataset]
    dirs = RunDirs(Path(work_dir) / dataset)
    data = ensure_data(dirs, source, folder if source == "recbole" else str(SHARED_DATA / folder))
    codebook = ensure_sids(dirs, data, codebook_size=codebook_size, seed=seed)
    ensure_tiny(dirs, data, seed=seed)
    return dirs, data, codebook


def run(dataset: str = "scientific", budget_minutes: float = 10.0, eval_users: int | None = 1000,
        max_history: int = 10, work_dir: str | Path = "runs/bench-rec", out_dir: str | Path = "eval/results",
        codebook_size: int = 256, seed: int = 0, num_examples: int | None = 12000) -> dict:
    """Prepare, build SIDs, train both systems within ``budget_minutes`` each, evaluate, write the report.

    ``num_examples`` caps the stage-1 examples per phase (None: every training example once). TRL
    tokenizes a phase's whole dataset before its first step, inside the budget: ~2 minutes for
    Scientific's 50k examples, so the default is about what 8 CPU minutes can train."""
    dirs, data, codebook = prepare_run(dataset, work_dir, codebook_size, seed)
    split = leave_one_out(data.interactions)  # SASRec's standard 50; think_rec prompts keep the last max_history
    start = time.perf_counter()
    model_dir = train_align(align_config(dirs, budget_minutes, max_history, seed, num_examples))
    train_seconds = time.perf_counter() - start
    test = sample_users(split.test, eval_users, seed)
    scored = type(split)(split.train, split.valid, test, split.max_history)
    rows = evaluate_systems(model_dir, data, codebook, scored, think_rec_train_seconds=train_seconds,
                            budget_seconds=60 * budget_minutes, max_history=max_history)
    payload = {"benchmark": "rec", "dataset": dataset, "budget_minutes": budget_minutes, "num_examples": num_examples,
               "eval_users": len(test), "max_history": max_history, "codebook": codebook.stats(),
               "rows": rows}
    write_report(dataset, payload, out_dir, metric_keys=METRICS)
    return payload
