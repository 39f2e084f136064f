"""The offline quickstart: MovieLens-100k (from the ``recbole`` wheel) -> SIDs -> tiny preset ->
stage-1 alignment -> evaluation against Markov, SASRec and popularity, then a few users' recommendations,
and a short stage-2 run that prints one user's rationale and items."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out
from think_rec.itemic.codebook import SIDCodebook
from think_rec.eval import bench_rec
from think_rec.eval.rec import METRICS, think_rec_ranker


def run(work_dir: str | Path = "runs/quickstart", budget_minutes: float = 3.0, eval_users: int | None = None,
        show_users: int = 3) -> dict:
    console = Console()
    console.rule("think_rec quickstart: MovieLens-100k, tiny Qwen3-VL, CPU")
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
    console.print("think_rec = the stage-1 model on the bare SID stream with a collaborative prior (weight "
                  f"{payload['rows'][0]['prior_weight']:g}, chosen on valid); think_rec_stream / think_rec_chat = "
                  "the model alone on each prompt; history excluded: " + str(payload["exclude_history"]))
    console.print(table)

    codebook = SIDCodebook.load(root / "sids")
    rank = think_rec_ranker(root / "align" / "final", data, codebook, max_history=payload["max_history"],
                            exclude_history=payload["exclude_history"])
    test = leave_one_out(data.interactions).test.select(range(show_users))
    for example, ranked in zip(test, rank(test["history"])):
        console.rule(f"user {example['user_id']}")
        console.print("recent history: " + "; ".join(data.catalog[i]["title"] for i in example["history"][-5:]))
        console.print(f"held-out next item: {data.catalog[example['target']]['title']}")
        for n, item in enumerate(ranked[:5], 1):
            console.print(f"  {n}. {codebook.sid_string(item)} {data.catalog[item]['title']}")

    from think_rec.eval.bench_reason import quickstart_example  # stage 2: think, then recommend

    console.rule(f"stage 2 (reasoning), user {test[0]['user_id']}")
    shown = quickstart_example(root, test[0], budget_minutes=min(2.0, budget_minutes),
                               max_history=payload["max_history"])
    console.print("history: " + "; ".join(shown["history"][-5:]))
    console.print(f"rationale: <think>{shown['rationale']}</think>")
    for n, title in enumerate(shown["items"], 1):
        console.print(f"  {n}. {title}")
    payload["reasoning_example"] = shown
    return payload
