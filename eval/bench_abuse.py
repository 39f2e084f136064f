"""``think-rec bench serve --abuse``: malformed, oversized and valid requests at once against a real server.

The bench builds its own small run (a generated shop with images under its data folder, random 2 x 32
SIDs, the tiny preset with SID tokens; nothing trained: only the server's behaviour is measured), starts
``think-rec serve`` per backend on 127.0.0.1 with an API key and ``--max-model-len 1024``, and fires a
seeded mix of ``requests`` at ``concurrency`` clients. Target: no 5xx, every valid request answered 200.
Each request has a timeout and the whole load a time budget (requests left are unanswered).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import string
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

from think_rec.serve.launch import start_server, stop_server

from .report import write_report

KEY = "bench-abuse-key"
MAX_MODEL_LEN = 1024
VALID = {"valid": 6.0, "valid_stream": 2.0, "valid_user": 2.0}  # relative weights in the mix
ABUSE = ("bad_json", "no_messages", "empty_content", "wrong_type", "unknown_user", "unknown_item", "n", "k",
         "think_tokens", "wrong_model", "unknown_session", "no_key", "wrong_key", "too_many_messages", "long_message",
         "long_id", "long_history", "big_body", "big_chunked_body", "long_prompt", "image_traversal", "wrong_method")
ABUSE_WEIGHT = 0.85  # each: about 65% of the mix is abuse


def build_run(work_dir: Path, n_items: int = 300, n_users: int = 200, seed: int = 0) -> tuple[Path, Path, Path]:
    """``(model, data, sids)`` under ``work_dir``, built once."""
    from think_rec.data.synthetic import generate_catalog
    from think_rec.itemic.codebook import SIDCodebook
    from think_rec.model.itemic_tokens import add_sid_tokens
    from think_rec.model.loading import load_model
    from think_rec.model.tiny import build_tiny

    from .bench_decode import synthetic_codebook

    data, sids, model = work_dir / "data", work_dir / "sids", work_dir / "model"
    if not (model / "config.json").exists():
        ds = generate_catalog(n_items, n_users, seed=seed, image_dir=data / "images")
        ds.save(data)
        codebook = synthetic_codebook(ds.catalog.ids, levels=2, codes=32, seed=seed)
        codebook.save(sids)
        build_tiny(work_dir / "tiny", ds.catalog.texts(), seed=seed)
        net, processor = load_model(str(work_dir / "tiny"))
        add_sid_tokens(net, processor, codebook, dict(zip(ds.catalog.ids, ds.catalog.items["title"])))
        net.save_pretrained(model)
        processor.save_pretrained(model)
    SIDCodebook.load(sids)
    return model, data, sids


def request_mix(n: int, items: Sequence[str], users: Sequence[str], seed: int = 0) -> list[tuple[str, dict]]:
    """``n`` seeded ``(kind, httpx request kwargs)``; kinds in ``VALID`` must be answered 200, the rest 4xx."""
    rng = random.Random(seed)
    kinds = list(VALID) + list(ABUSE)
    weights = list(VALID.values()) + [ABUSE_WEIGHT] * len(ABUSE)
    say = [{"role": "user", "content": "what should I get next?"}]
    junk = " ".join("".join(rng.choices(string.ascii_lowercase + string.digits, k=3)) for _ in range(999))

    def chat(body: Any = None, **kw) -> dict:
        return {"method": "POST", "url": "/v1/chat/completions", "json": body, **kw}

    def one(kind: str) -> dict:
        history = rng.sample(items, rng.randint(1, 10))
        base = {"messages": say, "history": history, "k": 5}
        return {
            "valid": lambda: chat(base),
            "valid_stream": lambda: chat({**base, "stream": True}),
            "valid_user": lambda: chat({"messages": say, "user": rng.choice(users), "k": 3}),
            "bad_json": lambda: chat(content=b'{"messages": [', headers={"content-type": "application/json"}),
            "no_messages": lambda: chat({"messages": []}),
            "empty_content": lambda: chat({"messages": [{"role": "user", "content": "  "}]}),
            "wrong_type": lambda: chat({"messages": "hi", "k": "ten"}),
            "unknown_user": lambda: chat({"messages": say, "user": "nobody"}),
            "unknown_item": lambda: chat({**base, "history": ["no-such-item"]}),
            "n": lambda: chat({**base, "n": 4}),
            "k": lambda: chat({**base, "k": 10_000}),
            "think_tokens": lambda: chat({**base, "think": True, "max_think_tokens": 100_000}),
            "wrong_model": lambda: chat({**base, "model": "gpt-4o"}),
            "unknown_session": lambda: chat({**base, "session_id": "guessed-session-id"}),
            "no_key": lambda: chat(base, headers={"authorization": ""}),
            "wrong_key": lambda: chat(base, headers={"authorization": "Bearer not-the-key"}),
            "too_many_messages": lambda: chat({"messages": say * 500}),
            "long_message": lambda: chat({"messages": [{"role": "user", "content": "x" * 20_000}]}),
            "long_id": lambda: chat({"messages": say, "user": "u" * 10_000}),
            "long_history": lambda: chat({**base, "history": items[:1] * 5000}),
            "big_body": lambda: chat({**base, "pad": "x" * (2 << 20)}),
            "big_chunked_body": lambda: chat(content=_chunks(2 << 20), headers={"content-type": "application/json"}),
            "long_prompt": lambda: chat({**base, "messages": [{"role": "user", "content": junk[:3990]}]}),
            "image_traversal": lambda: {"method": "GET", "url": "/v1/items/..%2F..%2F..%2Fetc%2Fpasswd/image"},
            "wrong_method": lambda: {"method": "DELETE", "url": "/v1/chat/completions"},
        }[kind]()
    return [(kind, one(kind)) for kind in rng.choices(kinds, weights, k=n)]


async def _chunks(n: int, size: int = 64 << 10):
    for _ in range(n // size):
        yield b"x" * size


async def fire(url: str, mix: Sequence[tuple[str, dict]], concurrency: int, timeout_s: float = 60,
               budget_s: float = 240) -> dict[str, Any]:
    """Send ``mix`` with ``concurrency`` clients; counts by outcome and the valid requests' p95 latency."""
    queue: asyncio.Queue = asyncio.Queue()
    for m in mix:
        queue.put_nowait(m)
    outcomes: list[tuple[str, int | None, float]] = []

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s,
                                     headers={"authorization": f"Bearer {KEY}"}) as client:
            while not queue.empty():
                kind, req = queue.get_nowait()
                t = time.perf_counter()
                try:
                    r = await client.request(**req)
                    status = r.status_code
                    if kind == "valid_stream" and (status != 200 or '"recommendation"' not in r.text
                                                   or '"error"' in r.text):
                        status = 599 if status == 200 else status  # an in-band error counts as a 5xx
                except httpx.HTTPError:
                    status = None
                outcomes.append((kind, status, time.perf_counter() - t))

    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), budget_s)
    except TimeoutError:
        pass
    valid = [(s, t) for k, s, t in outcomes if k in VALID]
    ok = [t for s, t in valid if s == 200]
    statuses = [s for _, s, _ in outcomes]
    return {"requests": len(mix), "malformed": sum(k not in VALID for k, _ in mix),
            "answered_4xx": sum(s is not None and 400 <= s < 500 for s in statuses),
            "answered_5xx": sum(s is not None and s >= 500 for s in statuses),
            "unanswered": len(mix) - len(outcomes) + statuses.count(None),
            "malformed_answered_2xx": sum(k not in VALID and s is not None and s < 300 for k, s, _ in outcomes),
            "valid": sum(k in VALID for k, _ in mix), "valid_ok": len(ok),
            "valid_p95_seconds": round(statistics.quantiles(ok, n=20)[18], 4) if len(ok) > 1 else None}


def run(out_dir: Path = Path("eval/results"), backends: Sequence[str] = ("hf", "vllm"), requests: int = 1000,
        concurrency: int = 16, work_dir: Path = Path("runs/bench_abuse"), startup_timeout_s: float = 300,
        budget_s: float = 240, seed: int = 0) -> dict[str, Any]:
    """One row per backend that started -> ``eval/results/abuse.json`` + .md + .png."""
    from think_rec.data.schema import RecDataset

    model, data, sids = build_run(work_dir, seed=seed)
    ds = RecDataset.load(data)
    mix = request_mix(requests, ds.catalog.ids, ds.interactions.users, seed)
    rows, skipped = [], {}
    os.environ["THINK_REC_API_KEY"] = KEY  # the server reads its key from the environment
    for backend in backends:
        args = ["--max-model-len", str(MAX_MODEL_LEN), "--session-db", str(work_dir / f"sessions-{backend}.sqlite")]
        t = time.perf_counter()
        try:
            proc, url = start_server(model, data, sids, backend, work_dir / f"{backend}.log", startup_timeout_s, args)
        except (RuntimeError, TimeoutError) as e:
            skipped[backend] = f"did not start: {e}"
            continue
        try:
            rows.append({"system": backend, **asyncio.run(fire(url, mix, concurrency, budget_s=budget_s)),
                         "startup_seconds": round(time.perf_counter() - t, 1)})
        finally:
            stop_server(proc)
    payload = {"benchmark": "abuse", "dataset": f"generated shop ({len(ds.catalog)} items), tiny preset, untrained",
               "setup": {"concurrency": concurrency, "max_model_len": MAX_MODEL_LEN, "seed": seed,
                         "kinds": {"valid": VALID, "malformed": list(ABUSE)}, "budget_seconds": budget_s,
                         "cpu_threads": os.environ.get("OMP_NUM_THREADS"), "cores": os.cpu_count()},
               "rows": rows, **({"skipped": skipped} if skipped else {})}
    if rows:
        write_report("abuse", payload, out_dir, metric_keys=["requests", "malformed", "answered_4xx", "answered_5xx",
                                                             "valid_ok", "valid_p95_seconds"])
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "abuse.json").write_text(json.dumps(payload, indent=2))
    return payload
