"""``think-rec bench rl``: does GRPO with the rollout-beam reward improve the stage-2 model?

Reuses the ``bench reason`` run under ``work_dir/DATASET`` (data, SIDs, stage-1 and stage-2 models), trains
stage 3 (``finetune/configs/rl_tiny.yaml`` pointed at it) within ``budget_minutes`` and scores, on the same
seeded test users, the stage-2 model with reasoning (``before_grpo``) and the GRPO model with and without its
rationale (``after_grpo``, ``after_grpo_no_reasoning``: the same model decoded with an empty think).
``mean_reward`` / ``zero_variance_group_share`` are the training log's first and last ``window`` steps (different
prompts); ``heldout_mean_reward`` is the reward on the recipe's held-out valid-split prompts (``eval_examples``, the
same prompts each time) at the start and at the end of GRPO, the measurement of whether the policy improved.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from think_rec.data.split import leave_one_out, sample_users
from think_rec.finetune.base_config import load_config
from think_rec.finetune.rl import train_rl
from think_rec.finetune.rl_config import RLConfig
from think_rec.finetune.run_state import MANIFEST
from think_rec.model.artefacts import RecModel

from .bench_rec import prepare_run
from .reasoning import FAITHFULNESS, evaluate_reasoning
from .report import write_report

RECIPE = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "rl_tiny.yaml"
METRICS = ("recall@10", "ndcg@10", "mean_reward", "zero_variance_group_share")


def rl_config(root: Path, budget_minutes: float, seed: int = 0, recipe: str | Path = RECIPE,
              **overrides: Any) -> RLConfig:
    """The stage-3 recipe pointed at the run under ``root`` (``overrides`` win), trained from scratch each time."""
    paths = dict(model=str(root / "reason" / "final"), data_dir=str(root / "data"), sids_dir=str(root / "sids"),
                 output_dir=str(root / "rl"))
    return load_config(RLConfig, recipe, **{**paths, "time_budget_minutes": budget_minutes, "seed": seed,
                                            "overwrite": True, **overrides})


def window_means(log: list[dict[str, Any]], window: int) -> tuple[dict[str, float], dict[str, float]]:
    """Mean reward and zero-variance group share over the first and the last ``window`` logged steps."""
    def mean(rows):
        return {k: sum(r[k] for r in rows) / len(rows) for k in ("mean_reward", "zero_variance_group_share")}
    return mean(log[:window]), mean(log[-window:])


def run(dataset: str = "scientific", budget_minutes: float = 10.0, eval_users: int | None = 2000,
        max_history: int = 10, max_think_tokens: int = 64, window: int = 20, work_dir: str | Path = "runs/bench-rec",
        out_dir: str | Path = "eval/results", codebook_size: int = 256, seed: int = 0) -> dict:
    """Stage 3 on the ``bench reason`` model, before/after on the same test users; writes ``DATASET_rl.*``."""
    dirs, data, codebook = prepare_run(dataset, work_dir, codebook_size, seed)
    stage2 = dirs.root / "reason" / "final"
    if not (stage2 / MANIFEST).exists():
        raise FileNotFoundError(f"{stage2}: no stage-2 model; run `think-rec bench reason --dataset {dataset}` first")
    test = sample_users(leave_one_out(data.interactions).test, eval_users, seed)
    score = dict(max_history=max_history, max_think_tokens=max_think_tokens)

    def metrics(model_dir: Path, think: bool, desc: str) -> dict[str, Any]:
        m, _ = evaluate_reasoning(RecModel.load(model_dir, codebook, data), test, think=think, desc=desc, **score)
        return m

    before = metrics(stage2, True, "before_grpo")
    config = rl_config(dirs.root, budget_minutes, seed, max_history=max_history,
                       max_completion_length=max_think_tokens)
    start = time.perf_counter()
    final = train_rl(config)
    train_seconds = time.perf_counter() - start
    log = json.loads((Path(config.output_dir) / "rl_log.json").read_text())
    heldout = json.loads((Path(config.output_dir) / "rl_heldout_log.json").read_text())
    first, last = window_means(log, window)
    if heldout:  # the same held-out prompts at the start and at the end
        first["heldout_mean_reward"] = heldout[0]["mean_reward"]
        last["heldout_mean_reward"] = heldout[-1]["mean_reward"]
    after = metrics(final, True, "after_grpo")
    plain = metrics(final, False, "after_grpo_no_reasoning")
    rows = [{"system": name, "recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"], **w,
             "grounding": m["grounding"], "mean_length": m["mean_length"], "eval_seconds": m["eval_seconds"],
             **{k: m[k] for k in FAITHFULNESS}}
            for name, m, w in (("before_grpo", before, first), ("after_grpo", after, last),
                               ("after_grpo_no_reasoning", plain, last))]
    gain = (after["ndcg@10"] - before["ndcg@10"]) / before["ndcg@10"] if before["ndcg@10"] else None
    payload = {"benchmark": "rl", "dataset": dataset, "budget_minutes": budget_minutes, "eval_users": len(test),
               "train_seconds": round(train_seconds, 1), "steps": log[-1]["step"] if log else 0,
               "reward_window_steps": window, "heldout_prompts": config.eval_examples,
               "heldout_reward_curve": [{"step": r["step"], "mean_reward": r["mean_reward"]} for r in heldout],
               "rewards": config.rewards, "num_generations": config.num_generations,
               "num_beams": config.num_beams, "beta": config.beta, "max_think_tokens": max_think_tokens,
               "ndcg@10_gain": gain,
               "reasoning_vs_none": after["ndcg@10"] / plain["ndcg@10"] if plain["ndcg@10"] else None,
               "reward_curve": f"{dataset}_rl_reward_curve.png", "rows": rows}
    write_report(f"{dataset}_rl", payload, out_dir, metric_keys=(*METRICS, *FAITHFULNESS))
    shutil.copyfile(Path(config.output_dir) / "reward_curve.png", Path(out_dir) / payload["reward_curve"])
    return payload
