"""``think-rec bench serve``: latency and throughput of the served chat API, vLLM vs transformers backend vs
Think-Ahead (``serve.think_ahead`` over the vLLM engine; its store is built first for the chats' users).

Each backend runs as its own ``think-rec serve`` process; this process is the load generator on
loopback. A chat is two turns: a test user's held-out history (leave-one-out test split, a seeded sample of
``chats`` users, the model's served history length) with no words (``message``: the prompt ``eval rec`` scores
and the Think-Ahead store was searched on; with words, Think-Ahead keeps its stored prefixes) and the served
history exclusion —
its top-10 gives Recall@10 against the held-out item — then the steering turn "cheaper, and not from that brand".
Every backend answers the same chats; each chat's first-turn top-10 is kept (``WORK_DIR/topk-BACKEND-xC.json``)
and rows state how many chats' top-10 equal the first backend's at concurrency 1 (``same_top10``). Every request
has a timeout and each (backend, concurrency) load a time budget (chats left are counted as errors).
Sessions go to ``WORK_DIR`` (the model folder is only read).
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out, sample_users
from think_rec.finetune.run_state import model_fingerprint
from think_rec.serve.launch import start_server, stop_server

from .metrics import recall_at_k
from .report import write_report

FIRST_MESSAGE = ""  # the history alone: the prompt `eval rec` scores and Think-Ahead stores


async def load(url: str, examples: Sequence[dict[str, Any]], concurrency: int, timeout_s: float = 120,
               budget_s: float | None = None, message: str = FIRST_MESSAGE
               ) -> tuple[dict[str, Any], list[list[tuple[str, float]] | None]]:
    """Run every example as a two-turn chat, ``concurrency`` chats at a time: the row (latencies, errors,
    recall@10) and each chat's first-turn top-10 ``(item, score)`` (None when it failed); ``message``: the first
    turn's words. Chats not finished within ``budget_s``
    count as errors (both turns)."""
    latencies: list[float] = []
    top10: list[list[tuple[str, float]] | None] = [None] * len(examples)
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    for n in range(len(examples)):
        queue.put_nowait(n)
    finished = 0

    async def turn(client: httpx.AsyncClient, body: dict) -> dict | None:
        nonlocal errors
        t = time.perf_counter()
        try:
            r = await client.post(url + "/v1/chat/completions", json=body, timeout=timeout_s)
        except httpx.HTTPError:
            errors += 1
            return None
        latencies.append(time.perf_counter() - t)
        if r.status_code != 200:
            errors += 1
            return None
        return r.json()

    async def worker() -> None:
        nonlocal errors, finished
        async with httpx.AsyncClient() as client:
            while not queue.empty():
                n = queue.get_nowait()
                ex = examples[n]
                first = await turn(client, {"messages": [{"role": "user", "content": message}],
                                            "history": ex["history"], "k": 10})
                if first is None:
                    errors += 1  # the second turn is not sent
                    finished += 1
                    continue
                top10[n] = [(it["id"], it["score"]) for it in first["recommendation"]["items"]]
                await turn(client, {"messages": [{"role": "user", "content": "cheaper, and not from that brand"}],
                                    "session_id": first["session_id"], "k": 10})
                finished += 1

    start = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), budget_s)
    except TimeoutError:
        errors += 2 * (len(examples) - finished)  # unfinished chats (in flight or never sent)
    wall = time.perf_counter() - start
    recalls = [recall_at_k([i for i, _ in t], ex["target"], 10) for t, ex in zip(top10, examples) if t is not None]
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    row = {"concurrency": concurrency, "requests": 2 * len(examples), "errors": errors,
           "p50_seconds": round(statistics.median(latencies), 4) if latencies else None,
           "p95_seconds": round(q[18], 4) if latencies else None,
           "requests_per_second": round(len(latencies) / wall, 3), "wall_seconds": round(wall, 1),
           "recall@10": round(sum(recalls) / len(examples), 4) if examples else None}
    return row, top10


def examples_of(data: Path, max_history: int, chats: int, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded sample of ``chats`` test users (leave-one-out, ``max_history`` items): user, history, target."""
    test = sample_users(leave_one_out(RecDataset.load(data).interactions, max_history=max_history).test, chats,
                        seed)
    return [{"user_id": r["user_id"], "history": r["history"], "target": r["target"]} for r in test]


def run(model: Path, data: Path, sids: Path, out_dir: Path = Path("eval/results"),
        backends: Sequence[str] = ("vllm", "hf", "think_ahead"), concurrency: Sequence[int] = (1, 16),
        chats: int = 200, max_history: int | None = None, work_dir: Path = Path("runs/bench_serve"),
        think_ahead_store: Path | None = None, seed: int = 0, dtype: str | None = None,
        budget_minutes: float = 60.0, timeout_s: float = 120.0, message: str = FIRST_MESSAGE) -> dict[str, Any]:
    """One row per (backend, concurrency) -> ``OUT_DIR/serve.json`` + .md + .png.

    ``think_ahead`` rows also count requests answered from the store vs fallbacks (from ``/health``);
    ``max_history`` defaults to the model's ``served.json``, as the server's; ``dtype``: vLLM's (default:
    ``served.json``'s); ``budget_minutes``: per (backend, concurrency) load."""
    from think_rec.model.artefacts import ServedConfig

    served = ServedConfig.load(model)
    fingerprint = model_fingerprint(model)  # of the weights served: the result file and the Think-Ahead store name it
    max_history = max_history or served.max_history
    ds = RecDataset.load(data)
    examples = examples_of(data, max_history, chats, seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    setup_extra: dict[str, Any] = {}
    if "think_ahead" in backends and think_ahead_store is None:  # a given store is used as it is
        from think_rec.serve.think_ahead import build_store

        think_ahead_store = work_dir / f"think_ahead-{fingerprint}.sqlite"  # one store per model
        t = time.perf_counter()
        added = build_store(model, data, sids, think_ahead_store, history="test", max_history=max_history,
                            users=[ex["user_id"] for ex in examples])
        setup_extra["think_ahead_build"] = {"users_added": added, "seconds": round(time.perf_counter() - t, 1)}
    if "think_ahead" in backends:
        setup_extra["think_ahead"] = {"store": str(think_ahead_store), "base": "vllm"}
    rows: list[dict[str, Any]] = []
    reference: list[list[str] | None] | None = None
    for backend in backends:
        extra = ["--think-ahead", str(think_ahead_store)] if backend == "think_ahead" else []
        if backend in ("vllm", "think_ahead") and dtype:
            extra += ["--dtype", dtype]
        sessions = work_dir / f"sessions-{backend}.sqlite"
        sessions.unlink(missing_ok=True)
        extra += ["--session-db", str(sessions), "--request-timeout", str(timeout_s)]
        t = time.perf_counter()
        proc, url = start_server(model, data, sids, backend, work_dir / f"{backend}.log", extra_args=extra)
        startup = time.perf_counter() - t
        try:
            for c in concurrency:
                before = httpx.get(url + "/health", timeout=10).json()
                row, top10 = asyncio.run(load(url, examples, c, timeout_s, budget_minutes * 60, message))
                row = {"system": backend, **row, "startup_seconds": round(startup, 1)}
                (work_dir / f"topk-{backend}-x{c}.json").write_text(json.dumps(
                    [{"user_id": ex["user_id"], "target": ex["target"], "top10": t}
                     for ex, t in zip(examples, top10)]))
                ids = [None if t is None else [i for i, _ in t] for t in top10]
                reference = ids if reference is None else reference
                row["same_top10"] = sum(a is not None and a == b for a, b in zip(ids, reference))
                after = httpx.get(url + "/health", timeout=10).json()
                for key in ("think_ahead_hits", "think_ahead_fallbacks"):
                    if key in after:
                        row[key] = after[key] - before[key]
                rows.append(row)
        finally:
            stop_server(proc)
    payload = {"benchmark": "serve", "dataset": f"{ds.name} ({len(ds.catalog)} items)",
               "model_fingerprint": fingerprint,
               "setup": {"model": str(model), "chats": len(examples), "first_message": message,
                         "users": f"seeded sample of test users (seed {seed})", "turns_per_chat": 2, "k": 10,
                         "max_history": max_history,
                         "exclude_history": served.exclude_history, "num_beams": served.num_beams,
                         "vllm_dtype": dtype or served.dtype, "same_top10_reference": f"{backends[0]} "
                         f"x{concurrency[0]}", "budget_minutes_per_load": budget_minutes,
                         "cpu_threads": os.environ.get("OMP_NUM_THREADS"), "cores": os.cpu_count(), **setup_extra},
               "rows": rows}
    write_report("serve", payload, out_dir, metric_keys=["concurrency", "errors", "p50_seconds", "p95_seconds",
                                                         "requests_per_second", "recall@10", "same_top10"])
    return payload
