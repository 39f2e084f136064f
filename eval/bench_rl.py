"""``think-rec bench rl``: does GRPO with the rollout-beam reward improve the stage-2 model?

Reuses the ``bench reason`` run under ``work_dir/DATASET`` (data, SIDs, stage-1 and stage-2 models) and trains stage 3
(``finetune/configs/rl_tiny.yaml`` pointed at it) within ``budget_minutes`` on prompts no stage trained on (each
user's valid-split example, ``prompt_split: valid``), leaving out ``heldout_users`` valid-split users. The measure of
whether the policy improved: the reward of the rationale each model writes as served (greedy) on those held-out
users, before (the stage-2 model) and after GRPO, paired (``heldout_reward_before``/``_after``/``_se``). Then, on
the same seeded test users, NDCG@10 with the items ranked after the rationale (as GRPO's reward ranks them) and
after an empty think, before and after: ``reasoning_vs_none`` = after GRPO, with / without the rationale; and the
GRPO model as served (``after_grpo_served``: the stage-2 model's ``served.json`` thinking ranking, follow weight and
rationale samples; ``served_reasoning_vs_none`` against the empty think).
``mean_reward`` / ``zero_variance_group_share`` are the training log's first and last ``window`` steps (different
prompts).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from think_rec.data.split import leave_one_out, sample_users
from think_rec.finetune.base_config import load_config
from think_rec.finetune.rl import heldout_rewards, reward_rollout, rl_dataset, train_rl
from think_rec.finetune.rl_config import RLConfig
from think_rec.finetune.run_state import MANIFEST, model_fingerprint
from think_rec.model.artefacts import RecModel

from .bench_rec import prepare_run
from .metrics import standard_error
from .reasoning import FAITHFULNESS, evaluate_reasoning
from .report import write_report

RECIPE = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "rl_tiny.yaml"
METRICS = ("recall@10", "ndcg@10", "ndcg@10_se", "heldout_reward", "mean_reward", "zero_variance_group_share")


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
        heldout_users: int = 500, max_history: int = 10, max_think_tokens: int = 64, window: int = 20,
        work_dir: str | Path = "runs/bench-rec", out_dir: str | Path = "eval/results", codebook_size: int = 256,
        seed: int = 0) -> dict:
    """Stage 3 on the ``bench reason`` model, before/after on held-out users and test users; writes
    ``DATASET_rl.*``."""
    dirs, data, codebook = prepare_run(dataset, work_dir, codebook_size, seed)
    stage2 = dirs.root / "reason" / "final"
    if not (stage2 / MANIFEST).exists():
        raise FileNotFoundError(f"{stage2}: no stage-2 model; run `think-rec bench reason --dataset {dataset}` first")
    test = sample_users(leave_one_out(data.interactions).test, eval_users, seed)
    config = rl_config(dirs.root, budget_minutes, seed, max_history=max_history, eval_examples=heldout_users,
                       eval_strategy="no", eval_on_start=False, max_completion_length=max_think_tokens)
    models = {"before": RecModel.load(stage2, codebook, data)}
    tok = getattr(models["before"].processor, "tokenizer", models["before"].processor)
    heldout = rl_dataset(config, data, codebook, models["before"].processor, heldout=True)
    rollout = reward_rollout(config, tok, models["before"].trie, data)

    def reward(rec: RecModel) -> list[float]:
        return heldout_rewards(rec.model, tok, rec.trie, heldout, rollout, config.rewards, codebook.codes,
                               max_think_tokens)

    rewards = {"before": reward(models["before"])}
    start = time.perf_counter()
    final = train_rl(config)
    train_seconds = time.perf_counter() - start
    models["after"] = RecModel.load(final, codebook, data)
    rewards["after"] = reward(models["after"])
    log = json.loads((Path(config.output_dir) / "rl_log.json").read_text())
    first, last = window_means(log, window)
    mean = {when: sum(r) / len(r) for when, r in rewards.items()}

    def row(system: str, m: dict[str, Any], when: str, steps: dict[str, float]) -> dict[str, Any]:
        return {"system": system, **{k: m[k] for k in ("recall@10", "ndcg@10", "ndcg@10_se")},
                "heldout_reward": mean[when], **steps, **{k: m[k] for k in ("grounding", "mean_length")},
                "eval_seconds": m["eval_seconds"], **{k: m[k] for k in FAITHFULNESS}}

    rows = []
    for when, think, w in (("before", True, first), ("before", False, first), ("after", True, last),
                           ("after", False, last)):
        system = f"{when}_grpo" + ("" if think else "_no_reasoning")
        m, _ = evaluate_reasoning(models[when], test, think=think, condition=True, follow_weight=0.0, desc=system,
                                  max_history=max_history, max_think_tokens=max_think_tokens)
        rows.append(row(system, m, when, w))
    served, _ = evaluate_reasoning(models["after"], test, desc="after_grpo_served", max_history=max_history,
                                   max_think_tokens=max_think_tokens)
    rows.append(row("after_grpo_served", served, "after", last))
    ndcg = {r["system"]: r["ndcg@10"] for r in rows}
    payload = {"benchmark": "rl", "dataset": dataset, "budget_minutes": budget_minutes, "eval_users": len(test),
               "heldout_users": len(heldout), "heldout_reward_before": mean["before"],
               "heldout_reward_after": mean["after"],
               "heldout_reward_se": standard_error([a - b for a, b in zip(rewards["after"], rewards["before"])]),
               "ndcg@10_gain": (ndcg["after_grpo"] - ndcg["before_grpo"]) / ndcg["before_grpo"]
               if ndcg["before_grpo"] else None,
               "reasoning_vs_none": ndcg["after_grpo"] / ndcg["after_grpo_no_reasoning"]
               if ndcg["after_grpo_no_reasoning"] else None,
               "served_reasoning_vs_none": ndcg["after_grpo_served"] / ndcg["after_grpo_no_reasoning"]
               if ndcg["after_grpo_no_reasoning"] else None,
               "protocol": "GRPO prompts: valid-split examples of users outside the held-out sample (targets no stage "
                           "trained on); held-out reward: the greedy rationale's weighted reward on the held-out "
                           "users, paired se; rows rank the items after the rationale (or an empty think) with the "
                           "served prior and history exclusion, follow weight 0; after_grpo_served: as served (the "
                           "stage-2 model's thinking ranking, follow weight and rationale samples)",
               "train_seconds": round(train_seconds, 1), "steps": log[-1]["step"] if log else 0,
               "reward_window_steps": window, "rewards": config.rewards, "prompt_split": config.prompt_split,
               "num_generations": config.num_generations, "num_beams": config.num_beams, "beta": config.beta,
               "learning_rate": config.learning_rate, "max_think_tokens": max_think_tokens,
               "model_fingerprint": model_fingerprint(final), "stage2_fingerprint": model_fingerprint(stage2),
               "reward_curve": f"{dataset}_rl_reward_curve.png", "rows": rows}
    write_report(f"{dataset}_rl", payload, out_dir, metric_keys=(*METRICS, *FAITHFULNESS))
    shutil.copyfile(Path(config.output_dir) / "reward_curve.png", Path(out_dir) / payload["reward_curve"])
    return payload
