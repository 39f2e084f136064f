"""``think-rec bench steering``: do users' steering words reach the recommendations?

Prompts are generated from catalog attributes per test user (leave-one-out split): exclude a brand
that the unsteered top-10 contains, include a category, a price ceiling (the unsteered median), and
a two-turn "cheaper". Phrasings rotate over a few templates; a prompt succeeds when items come back
and every one honours the request. Recall@10 is measured unsteered — with the chat prompt and a
neutral message, and with the plain stage-1 prompt — to show what the chat format costs.
"""
from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any, Sequence

from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out
from think_rec.itemic.codebook import SIDCodebook
from think_rec.prompts import render_recommend_prompt
from think_rec.serve.conversation import Conversation, Session
from think_rec.serve.engine import EngineConfig, build_engine, run as run_engine

from .metrics import recall_at_k
from .report import write_report

NEUTRAL = "What should I get next?"
PHRASES = {
    "exclude_brand": ["not from {brand}", "no {brand} please", "anything but {brand}", "I don't want {brand}"],
    "include_category": ["show me {category}", "something in {category}", "I'd like {category} now"],
    "price_under": ["under ${price:.2f}", "less than {price:.2f} dollars", "at most ${price:.2f}"],
    "cheaper": ["cheaper", "something cheaper please", "more affordable ones"],
}


async def _evaluate(engine, conv: Conversation, examples: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
    catalog = conv.catalog
    ok: dict[str, list[bool]] = {kind: [] for kind in PHRASES}
    recall_chat, recall_plain = [], []
    categories = sorted({c for it in conv.items for c in it["categories"]})

    async def turn(session: Session, text: str) -> list[str]:
        conv.add_user_message(session, text)
        rec = await run_engine(engine, conv.prompt(session), k=k, banned=conv.banned(session, exclude_seen=False))
        ids = [i for i, _ in rec.items]
        session.last_items, session.recommended = ids, session.recommended + ids
        return ids

    for n, ex in enumerate(examples):
        base = Session(f"u{n}", history=list(ex["history"]))
        ranked = await turn(base, NEUTRAL)
        recall_chat.append(recall_at_k(ranked, ex["target"], 10))
        plain = render_recommend_prompt(ex["history"], catalog, conv.codebook, conv.tokenizer, with_images=False)
        recall_plain.append(recall_at_k([i for i, _ in (await run_engine(engine, plain.text, k=k)).items],
                                        ex["target"], 10))
        top = [catalog[i] for i in ranked]
        brand = next((it["brand"] for it in top if it["brand"]), None)
        others = [c for c in categories if not top or c not in top[0]["categories"]]
        category = others[n % len(others)]
        prices = [it["price"] for it in top if it["price"] is not None]
        ceiling = statistics.median(prices) if prices else None
        checks = {"exclude_brand": (brand, lambda it: it["brand"] != brand),
                  "include_category": (category, lambda it: category in it["categories"]),
                  "price_under": (ceiling, lambda it: it["price"] is not None and it["price"] <= ceiling)}
        for kind, (value, good) in checks.items():
            if value is None:
                continue
            phrase = PHRASES[kind][n % len(PHRASES[kind])].format(brand=value, category=value, price=value)
            ids = await turn(Session(f"{kind}{n}", history=list(ex["history"])), phrase)
            ok[kind].append(bool(ids) and all(good(catalog[i]) for i in ids))
        if prices:  # second turn after the neutral answer: "cheaper" = below that answer's median price
            ids = await turn(base, PHRASES["cheaper"][n % len(PHRASES["cheaper"])])
            ok["cheaper"].append(bool(ids) and all(catalog[i]["price"] is not None
                                                   and catalog[i]["price"] < ceiling for i in ids))
    prompts = sum(len(v) for v in ok.values())
    return {"prompts": prompts, "success_rate": round(sum(sum(v) for v in ok.values()) / max(prompts, 1), 4),
            **{f"success_{kind}": round(sum(v) / len(v), 4) if v else None for kind, v in ok.items()},
            "recall@10_unsteered": round(sum(recall_chat) / len(recall_chat), 4),
            "recall@10_plain_prompt": round(sum(recall_plain) / len(recall_plain), 4)}


def run(model: Path, data: Path, sids: Path, out_dir: Path = Path("eval/results"),
        backends: Sequence[str] = ("vllm", "hf"), users: int = 40, k: int = 10,
        max_history: int = 20) -> dict[str, Any]:
    """One row per backend -> ``eval/results/steering.json`` + .md + .png."""
    ds = RecDataset.load(data)
    codebook = SIDCodebook.load(sids)
    test = leave_one_out(ds.interactions, max_history=max_history).test
    examples = [test[i] for i in range(min(users, len(test)))]
    rows = []
    for backend in backends:
        engine = build_engine(backend, EngineConfig(Path(model), Path(sids)))

        async def go() -> dict[str, Any]:
            await engine.start()
            try:
                from transformers import AutoTokenizer

                conv = Conversation(ds, codebook, AutoTokenizer.from_pretrained(str(model)), max_history)
                return await _evaluate(engine, conv, examples, k)
            finally:
                engine.shutdown()
        rows.append({"system": backend, **asyncio.run(go())})
    payload = {"benchmark": "steering", "dataset": f"{ds.name} ({len(ds.catalog)} items)",
               "setup": {"model": str(model), "users": len(examples), "k": k,
                         "phrasings": {kind: p for kind, p in PHRASES.items()}},
               "rows": rows}
    write_report("steering", payload, out_dir, metric_keys=["success_rate", "recall@10_unsteered",
                                                            "recall@10_plain_prompt"])
    return payload
