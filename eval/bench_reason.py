"""``think-rec bench reason``: does thinking help, and can people read the rationale? One stage-2 model
scored with and without its rationale.

Reuses the ``bench rec`` run (data, SIDs, stage-1 model) under ``work_dir/DATASET`` or builds it with the
same budget; stage 2 (template teacher, filters, full SFT of the tiny model) gets its own ``budget_minutes``
of training and, when it ends, chooses its served thinking ranking on valid users (``served.json``
``think_ranking``, ``follow_weight``). Rows on the same seeded test users (2,000 by default): ``no_reasoning``
(the **same stage-2 model decoded with an empty think**), ``reasoning`` (as served), ``reasoning_conditioned``
(ranked after the rationale, not following its claims) and ``oracle_rationale`` (the teacher's rationale for the
true target: the bound of what a rationale can give). Nothing is selected on test. With ``served_think`` the
stage-2 model as served is also scored on every test user and written as the ``served_think`` row of the
``bench rec`` table (``DATASET.json``) whose stage-1 model it was trained from (``add_served_think``). The
teachers (``template``, ``self``) are compared on ``probe_examples`` training examples by what the filters and the
top-10 rank check accept. With ``rejection_top_n=None`` the rank check is skipped in training: the stage-1 model
ranks the target in its top 10 for only a few percent of examples whatever the rationale, so the check would leave
almost only empty thinks.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from think_rec.data.split import leave_one_out, sample_users
from think_rec.decoding.claims import ClaimChecker
from think_rec.finetune.align import train_align
from think_rec.finetune.base_config import load_config
from think_rec.finetune.reason import train_reason
from think_rec.finetune.rationales import make_teacher
from think_rec.finetune.reason_config import ReasonConfig
from think_rec.finetune.reason_data import build_rationales, encode_citations, sample_examples
from think_rec.finetune.run_state import MANIFEST, model_fingerprint
from think_rec.model.artefacts import RecModel
from think_rec.model.loading import load_model
from think_rec.pipeline import RunDirs

from .bench_rec import align_config, prepare_run
from .reasoning import FAITHFULNESS, evaluate_reasoning, reasoning_ablation
from .rec import METRICS
from .report import git_commit, write_report

log = logging.getLogger(__name__)

ROW_KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "ndcg@10_se", "grounding", "complete", "citations", "leakage",
            "mean_length", "readability", "closed_by_model", "consistency", "acceptance_rate", "eval_users",
            *FAITHFULNESS)
RECIPE = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "reason_tiny.yaml"
STATS = ("examples", "accepted", "acceptance_rate", "rejected_leakage", "rejected_incomplete", "rejected_ungrounded",
         "rejected_rank", "top_n", "mean_rationale_words")


def reason_config(dirs: RunDirs, budget_minutes: float, max_history: int, num_examples: int,
                  rejection_top_n: int | None, seed: int = 0, recipe: str | Path = RECIPE) -> ReasonConfig:
    """The stage-2 recipe (``finetune/configs/reason_tiny.yaml``) pointed at the run in ``dirs``, trained from
    scratch each time."""
    return load_config(ReasonConfig, recipe, output_dir=str(dirs.root / "reason"), model=str(dirs.align / "final"),
                       data_dir=str(dirs.data), sids_dir=str(dirs.sids), max_history=max_history,
                       num_examples=num_examples, rejection_top_n=rejection_top_n, time_budget_minutes=budget_minutes,
                       seed=seed, overwrite=True)


def teacher_probe(dirs: RunDirs, data, codebook, max_history: int, n: int, seed: int = 0) -> dict[str, dict]:
    """Per teacher (``template``, ``self``: the stage-1 model), what the filters and the top-10 rank check of
    the stage-1 model accept on ``n`` training examples."""
    model, processor = load_model(dirs.align / "final")
    model.eval()
    examples = sample_examples(leave_one_out(data.interactions, max_history=max_history), codebook, n, seed=seed)
    out = {}
    for name, kwargs in (("template", {}), ("self", {"model": model, "processor": processor})):
        _, stats = build_rationales(examples, data, codebook, dirs.sids, make_teacher(name, **kwargs), model=model,
                                    processor=processor, top_n=10, progress=False)
        out[name] = {k: stats[k] for k in STATS}
    return out


def oracle_rationales(rec: RecModel, examples, dirs: RunDirs, prune_k: int = 10) -> list[str]:
    """The template teacher's rationale for each example's true target (from its pruned history, as stage 2 trains;
    "" where the filters reject it), citations as SID strings: the oracle bound of the think step."""
    rows, _ = build_rationales(examples, rec.dataset, rec.codebook, dirs.sids, make_teacher("template"),
                               prune_k=prune_k, top_n=None, progress=False)
    items = rec.items
    return [encode_citations(r["rationale"], [items[i] for i in r["history"]], rec.codebook) for r in rows]


def scored_table(table: Path, stage1_fingerprint: str, users: int) -> dict[str, Any] | None:
    """The ``bench rec`` table ``table`` when it scored the stage-1 model ``stage1_fingerprint`` on ``users`` test
    users (where a ``served_think`` row belongs); else None, saying why."""
    if not table.exists():
        log.warning("%s: no bench rec table; served_think not added", table)
        return None
    payload = json.loads(table.read_text())
    if payload.get("model_fingerprint") != stage1_fingerprint or payload.get("eval_users") != users:
        log.warning("%s scored another stage-1 model or user set (fingerprint %s, %s users; stage 2 was trained "
                    "from %s, scored on %s): served_think not added", table, payload.get("model_fingerprint"),
                    payload.get("eval_users"), stage1_fingerprint, users)
        return None
    return payload


def add_served_think(table: Path, row: dict[str, Any], stage1_fingerprint: str, stage2_fingerprint: str,
                     think: dict[str, Any]) -> bool:
    """Put ``row`` (``served_think``) into the ``bench rec`` table ``table`` (its md and png re-drawn) when that
    table scored the stage-1 model ``stage1_fingerprint`` on as many users (``scored_table``). The row's
    ``train_seconds`` gains the stage-1 seconds of the table's ``served`` row; ``think`` (the stage-2 model's
    served thinking ranking) is recorded beside its fingerprint."""
    payload = scored_table(table, stage1_fingerprint, row["eval_users"])
    if payload is None:
        return False
    rows = [r for r in payload["rows"] if r["system"] != "served_think"]
    at = next((n + 1 for n, r in enumerate(rows) if r["system"] == "served"), 0)
    row["train_seconds"] = round(row["train_seconds"] + (rows[at - 1]["train_seconds"] if at else 0.0), 1)
    payload["rows"] = [*rows[:at], row, *rows[at:]]
    payload["served_think"] = {"model_fingerprint": stage2_fingerprint, "commit": git_commit(), **think}
    write_report(table.stem, payload, table.parent, metric_keys=METRICS)
    return True


def served_think_row(rec: RecModel, test, max_history: int, max_think_tokens: int, stage2_seconds: float
                     ) -> dict[str, Any]:
    """The stage-2 model as ``think-rec serve`` answers a chat (rationale, then items by its served thinking
    ranking, with the prior) on ``test``; ``train_seconds``: stage 2's."""
    metrics, _ = evaluate_reasoning(rec, test, max_history=max_history, max_think_tokens=max_think_tokens,
                                    desc="served_think")
    return {"system": "served_think", **{k: metrics[k] for k in METRICS}, "train_seconds": round(stage2_seconds, 1),
            "eval_seconds": metrics["eval_seconds"], "eval_users": metrics["users"],
            "faithful@1": metrics["faithful@1"]}


def run(dataset: str = "scientific", budget_minutes: float = 8.0, eval_users: int | None = 2000,
        max_history: int = 10, work_dir: str | Path = "runs/bench-rec", out_dir: str | Path = "eval/results",
        num_examples: int = 4000, rejection_top_n: int | None = None, max_think_tokens: int = 64,
        probe_examples: int = 100, codebook_size: int = 256, seed: int = 0, served_think: bool = True,
        sampled_rationales: int = 4) -> dict:
    """Stage 1 (reused or trained), stage 2, the ablation on test users; writes ``DATASET_reason.*``."""
    dirs, data, codebook = prepare_run(dataset, work_dir, codebook_size, seed)
    stage1_reused = (dirs.align / "final" / MANIFEST).exists()
    if not stage1_reused:
        train_align(align_config(dirs, budget_minutes, seed, max_history=max_history))
    probe = teacher_probe(dirs, data, codebook, max_history, probe_examples, seed) if probe_examples else None
    start = time.perf_counter()
    cfg = reason_config(dirs, budget_minutes, max_history, num_examples, rejection_top_n, seed)
    final = train_reason(cfg)
    stage2_seconds = time.perf_counter() - start
    stats = json.loads((dirs.root / "reason" / "reason_stats.json").read_text())

    split = leave_one_out(data.interactions)
    test = sample_users(split.test, eval_users, seed)
    rec = RecModel.load(final, codebook, data)
    rows, results = reasoning_ablation(rec, test, max_history=max_history, max_think_tokens=max_think_tokens)
    oracle, _ = evaluate_reasoning(rec, test, max_history=max_history, condition=True, follow_weight=0.0,
                                   rationales=oracle_rationales(rec, test, dirs), desc="oracle_rationale")
    rows.append({"system": "oracle_rationale", **oracle})
    sampled, _ = evaluate_reasoning(rec, test, max_history=max_history, max_think_tokens=max_think_tokens,
                                    condition=True, follow_weight=0.0, num_rationales=sampled_rationales,
                                    desc="reasoning_sampled")
    rows.append({"system": "reasoning_sampled", **sampled, "num_rationales": sampled_rationales})
    for row in rows:
        row["eval_users"] = len(test)
        row["acceptance_rate"] = stats["acceptance_rate"]
        row["stage2_seconds"] = round(stage2_seconds, 1)  # rationales + training
    base, think = rows[0]["ndcg@10"], rows[1]["ndcg@10"]
    items = {i: r["title"] for i, r in data.catalog.by_id.items()}
    first, history = results[0], test[0]["history"][-max_history:]
    shown = ClaimChecker(rec.items).shorten(first.rationales[0], history, first.items[0][0] if first.items else None)
    example = {"history": [items[i] for i in history], "target": items[test[0]["target"]],
               "rationale": first.rationales[0], "shown": shown, "items": [items[i] for i, _ in first.items[:5]]}
    payload = {"benchmark": "reason", "dataset": dataset,
               "rows": [{"system": r["system"], **{k: r[k] for k in ROW_KEYS},
                         **{k: v for k, v in r.items() if k not in ROW_KEYS and k != "system"}} for r in rows],
               "ndcg@10_gain": (think - base) / base if base else None, "ndcg@10_se": rows[1]["ndcg@10_gain_se"],
               "served_think": {"think_ranking": rec.served.think_ranking, "follow_weight": rec.served.follow_weight,
                                "rationale_samples": rec.served.rationale_samples,
                                "selection": rec.served.notes.get("think_selection")},
               "ablation": "no_reasoning = the same stage-2 model decoded with an empty think; reasoning = as served "
                           "(think_ranking, follow_weight chosen on valid; of rationale_samples rationales drawn, the "
                           "greedy one first, the one ClaimChecker.choose picks: no self-contradiction, claims its "
                           "first item satisfies); reasoning_greedy = as served with the greedy rationale alone (the "
                           "model's first draft); reasoning_conditioned = ranked after the greedy rationale, not "
                           "following it; oracle_rationale = the template teacher's rationale (all its claims) for the "
                           "true target (reads test targets: a bound, never a choice); reasoning_sampled = ranked "
                           "after each of num_rationales rationales (the greedy one and seeded draws at temperature "
                           "0.8, top-p 0.95), merged by mean probability, not following them (measured, not served)",
               "budget_minutes": budget_minutes, "stage1_reused": stage1_reused, "eval_users": len(test),
               "max_history": max_history, "max_think_tokens": max_think_tokens, "teacher": cfg.teacher,
               "teacher_kwargs": cfg.teacher_kwargs, "rationales": {k: stats[k] for k in (*STATS, "seconds")},
               "rejection_top_n": rejection_top_n, "teacher_probe": probe,
               "train_steps": stats["steps"], "example": example,
               "model_fingerprint": model_fingerprint(final),
               "stage1_fingerprint": model_fingerprint(dirs.align / "final")}
    write_report(f"{dataset}_reason", payload, out_dir, metric_keys=ROW_KEYS)
    table, everyone = Path(out_dir) / f"{dataset}.json", sample_users(split.test, None, seed)
    if served_think and scored_table(table, payload["stage1_fingerprint"], len(everyone)) is not None:
        row = served_think_row(rec, everyone, max_history, max_think_tokens, stage2_seconds)  # all test users: long
        add_served_think(table, row, payload["stage1_fingerprint"], payload["model_fingerprint"],
                         {"think_ranking": rec.served.think_ranking, "follow_weight": rec.served.follow_weight,
                          "rationale_samples": rec.served.rationale_samples})
    return payload
