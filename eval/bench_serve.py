"""``think-rec bench serve``: latency and throughput of the served chat API, vLLM vs transformers backend vs
Think-Ahead (``serve.think_ahead`` over the vLLM engine; its store is built first for the chats' users).

Each backend runs as its own ``think-rec serve`` process; this process is the load generator on
loopback. A chat is two turns: the user's held-out history (leave-one-out test split) with a neutral
message — its top-10 gives Recall@10 against the held-out item — then the steering turn "cheaper,
and not from that brand". Every request has a timeout and the whole run a time budget.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out
from think_rec.serve.launch import start_server, stop_server

from .metrics import recall_at_k
from .report import write_report


async def load(url: str, examples: Sequence[dict[str, Any]], concurrency: int,
               timeout_s: float = 60) -> dict[str, Any]:
    """Run every example as a two-turn chat, ``concurrency`` chats at a time: latencies, errors, recall@10."""
    latencies: list[float] = []
    recalls: list[float] = []
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    for ex in examples:
        queue.put_nowait(ex)

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
        async with httpx.AsyncClient() as client:
            while not queue.empty():
                ex = queue.get_nowait()
                first = await turn(client, {"messages": [{"role": "user", "content": "What should I get next?"}],
                                            "history": ex["history"], "k": 10, "exclude_seen": False})
                if first is None:
                    continue
                recalls.append(recall_at_k([it["id"] for it in first["recommendation"]["items"]], ex["target"], 10))
                await turn(client, {"messages": [{"role": "user", "content": "cheaper, and not from that brand"}],
                                    "session_id": first["session_id"], "k": 10})

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {"concurrency": concurrency, "requests": len(latencies) + errors, "errors": errors,
            "p50_seconds": round(statistics.median(latencies), 4) if latencies else None,
            "p95_seconds": round(q[18], 4) if latencies else None,
            "requests_per_second": round(len(latencies) / wall, 3),
            "recall@10": round(sum(recalls) / len(recalls), 4) if recalls else None}


def run(model: Path, data: Path, sids: Path, out_dir: Path = Path("eval/results"),
        backends: Sequence[str] = ("vllm", "hf", "think_ahead"), concurrency: Sequence[int] = (1, 16),
        chats: int = 32, max_history: int | None = None, work_dir: Path = Path("runs/bench_serve"),
        think_ahead_store: Path | None = None) -> dict[str, Any]:
    """One row per (backend, concurrency) -> ``eval/results/serve.json`` + .md + .png.

    ``think_ahead`` rows also count requests answered from the store vs fallbacks (from ``/health``);
    ``max_history`` defaults to the model's ``served.json``, as the server's."""
    from think_rec.model.artefacts import ServedConfig

    max_history = max_history or ServedConfig.load(model).max_history
    ds = RecDataset.load(data)
    test = leave_one_out(ds.interactions, max_history=max_history).test
    examples = [{"history": test[i]["history"], "target": test[i]["target"]} for i in range(min(chats, len(test)))]
    work_dir.mkdir(parents=True, exist_ok=True)
    setup_extra: dict[str, Any] = {}
    if "think_ahead" in backends and think_ahead_store is None:  # a given store is used as it is
        from think_rec.serve.think_ahead import build_store

        think_ahead_store = work_dir / "think_ahead.sqlite"
        t = time.perf_counter()
        added = build_store(model, data, sids, think_ahead_store, history="test", max_history=max_history,
                            users=[test[i]["user_id"] for i in range(len(examples))])
        setup_extra["think_ahead_build"] = {"users_added": added, "seconds": round(time.perf_counter() - t, 1)}
    if "think_ahead" in backends:
        setup_extra["think_ahead"] = {"store": str(think_ahead_store), "base": "vllm"}
    rows = []
    for backend in backends:
        extra = ["--think-ahead", str(think_ahead_store)] if backend == "think_ahead" else []
        t = time.perf_counter()
        proc, url = start_server(model, data, sids, backend, work_dir / f"{backend}.log", extra_args=extra)
        startup = time.perf_counter() - t
        try:
            for c in concurrency:
                before = httpx.get(url + "/health", timeout=10).json()
                row = {"system": backend, **asyncio.run(load(url, examples, c)), "startup_seconds": round(startup, 1)}
                after = httpx.get(url + "/health", timeout=10).json()
                for key in ("think_ahead_hits", "think_ahead_fallbacks"):
                    if key in after:
                        row[key] = after[key] - before[key]
                rows.append(row)
        finally:
            stop_server(proc)
    payload = {"benchmark": "serve", "dataset": f"{ds.name} ({len(ds.catalog)} items)",
               "setup": {"model": str(model), "chats": len(examples), "turns_per_chat": 2, "k": 10,
                         "cpu_threads": os.environ.get("OMP_NUM_THREADS"), "cores": os.cpu_count(), **setup_extra},
               "rows": rows}
    write_report("serve", payload, out_dir, metric_keys=["concurrency", "errors", "p50_seconds", "p95_seconds",
                                                         "requests_per_second", "recall@10"])
    return payload
