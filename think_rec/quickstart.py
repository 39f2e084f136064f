"""The offline quickstart: MovieLens-100k (from the ``recbole`` wheel) -> SIDs -> tiny preset ->
stage-1 alignment -> evaluation against Markov, SASRec and popularity, then a few users' recommendations,
and a short stage-2 run that prints one user's rationale and items.

The screen shows one status line per stage and the results; what the libraries print on the way (trainer
per-step logs, tokenising bars, warnings) goes to ``WORK_DIR/quickstart.log``."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.table import Table

from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out
from think_rec.itemic.codebook import SIDCodebook
from think_rec.eval import bench_rec
from think_rec.eval.rec import METRICS
from think_rec.finetune.served import served_ranking
from think_rec.model.artefacts import RecModel


@contextlib.contextmanager
def stage(console: Console, log: Path, what: str) -> Iterator[None]:
    """A status line for ``what`` while its Python-level stdout/stderr are appended to ``log``."""
    start = time.monotonic()
    with log.open("a") as out, console.status(f"{what} (log: {log})"), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        print(f"=== {what}", flush=True)
        yield
    console.print(f"[green]done[/green] {what} ({time.monotonic() - start:.0f} s)")


def quiet_libraries() -> None:
    """Only errors from the transformers and datasets loggers, and none of their progress bars."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def reasoning_example(root: str | Path, examples, budget_minutes: float = 2.0, max_history: int = 10,
                      num_examples: int = 1000, seed: int = 0) -> dict:
    """Stage 2 (template teacher, no rank check) on the run under ``root``, then the first of ``examples`` whose
    shown rationale cites a history item and claims something of the next item (else the first that cites, else the
    first): its history, the rationale as the chat page shows it (following and kept to what holds for the first
    item, ``ClaimChecker.answer``) and its top items, as titles."""
    from think_rec.decoding import think_then_recommend
    from think_rec.decoding.claims import ClaimChecker
    from think_rec.eval.bench_reason import reason_config
    from think_rec.finetune.rationale_filters import citation_title, title_mentioned
    from think_rec.finetune.reason import train_reason
    from think_rec.pipeline import RunDirs
    from think_rec.prompts import served_prompt

    dirs = RunDirs(Path(root))
    config = reason_config(dirs, budget_minutes, max_history, num_examples, None, seed)
    config.think_valid_users = min(config.think_valid_users, 500)  # 8 rationales each: the choice in ~2 CPU minutes
    final = train_reason(config)
    rec = RecModel.load(final, dirs.sids, dirs.data)
    items, served, checker = rec.items, rec.served, ClaimChecker(rec.items)
    tok = getattr(rec.processor, "tokenizer", rec.processor)
    histories = [list(h)[-max_history:] for h in examples["history"]]
    results = think_then_recommend(rec.model, rec.processor,
                                   [served_prompt(tok, h, items, rec.codebook, max_history) for h in histories],
                                   rec.trie, k=max(5, served.num_beams), num_beams=served.num_beams,
                                   citations=[{i: citation_title(items[i]) for i in h} for h in histories],
                                   exclude=[set(h) for h in histories] if served.exclude_history else None,
                                   histories=histories, prior=rec.prior,
                                   condition=served.ranks_after_rationale,
                                   num_rationales=served.rationale_samples, do_sample=served.rationale_samples > 1)
    shown = [checker.answer(r.rationales, h, r.items, served.follow_weight, 5) for r, h in zip(results, histories)]
    cites = [n for n, ((text, _), h) in enumerate(zip(shown, histories))
             if any(title_mentioned(text, items[i]["title"]) for i in h)]
    claiming = [n for n in cites if len(checker.claims(shown[n][0], histories[n]))]
    n = (claiming or cites or [0])[0]
    (text, ranked), history = shown[n], histories[n]
    return {"user_id": examples["user_id"][n], "history": [items[i]["title"] for i in history],
            "target": items[examples["target"][n]]["title"], "rationale": text,
            "generated": results[n].rationales[0], "items": [items[i]["title"] for i, _ in ranked],
            "think_ranking": served.think_ranking, "follow_weight": served.follow_weight}


def run(work_dir: str | Path = "runs/quickstart", budget_minutes: float = 3.0, eval_users: int | None = None,
        show_users: int = 3) -> dict:
    console = Console(file=sys.stdout)  # the terminal, also while a stage's output goes to the log
    log = Path(work_dir) / "quickstart.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    console.rule("think_rec quickstart: MovieLens-100k, tiny Qwen3-VL, CPU")
    with stage(console, log, f"data, SIDs, stage 1 ({budget_minutes:g} min), baselines, evaluation"):
        payload = bench_rec.run("ml-100k", budget_minutes=budget_minutes, eval_users=eval_users,
                                work_dir=work_dir, out_dir=Path(work_dir) / "results", valid_users=None)
    root = Path(work_dir) / "ml-100k"
    data = RecDataset.load(root / "data")
    for title, values in (("dataset", data.stats()), ("semantic IDs", payload["codebook"])):
        stats = Table(title=title, show_header=False)
        for key, value in values.items():
            stats.add_row(str(key), str(value))
        console.print(stats)
    table = Table(title=f"Leave-one-out test, {payload['eval_users']} users, "
                        f"{budget_minutes:g} min training budget each")
    for col in ("system", *METRICS, "train_seconds"):
        table.add_column(col)
    for row in payload["rows"]:
        table.add_row(row["system"], *(f"{row[m]:.4f}" for m in METRICS), f"{row['train_seconds']:.0f}")
    console.print("served = what `think-rec serve` answers: the chat prompt ranked with the model's collaborative "
                  f"prior (weight {payload['prior_weight']:g}, chosen on valid); served_model = the model alone; "
                  "prior = the prior alone (how it counts chosen on valid; markov: first-order); "
                  "think_rec / think_rec_stream = the sequence model on the bare SID stream with / without the "
                  f"prior; history excluded: {payload['exclude_history']}")
    console.print(table)

    codebook = SIDCodebook.load(root / "sids")
    split_test = leave_one_out(data.interactions).test
    test = split_test.select(range(show_users))
    with stage(console, log, f"recommendations for {show_users} users (the served ranking)"):
        rec = RecModel.load(root / "align" / "final", codebook, data)
        ranked_lists = [[i for i, _ in ranked] for ranked in served_ranking(rec, test["history"])]
    for example, ranked in zip(test, ranked_lists):
        console.rule(f"user {example['user_id']}")
        console.print("recent history: " + "; ".join(data.catalog[i]["title"] for i in example["history"][-5:]))
        console.print(f"held-out next item: {data.catalog[example['target']]['title']}")
        for n, item in enumerate(ranked[:5], 1):
            console.print(f"  {n}. {codebook.sid_string(item)} {data.catalog[item]['title']}")

    with stage(console, log, f"stage 2 (reasoning, {min(2.0, budget_minutes):g} min)"):
        shown = reasoning_example(root, split_test.select(range(20)), budget_minutes=min(2.0, budget_minutes),
                                  max_history=payload["served"]["max_history"])
    console.rule(f"stage 2 (reasoning), user {shown['user_id']}: the rationale as served (kept to what holds for "
                 "the first item)")
    console.print("history: " + "; ".join(shown["history"][-5:]))
    console.print(f"rationale: <think>{shown['rationale']}</think>")
    for n, title in enumerate(shown["items"], 1):
        console.print(f"  {n}. {title}")
    payload["reasoning_example"] = shown
    return payload
