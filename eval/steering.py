"""``think-rec bench steering``: does the model follow a user's words, with and without the trie enforcing them?

Per test user (a seeded sample, leave-one-out; ``split="valid"`` scores valid users instead, for recipe choices),
requests are derived from the target item (``SteeringRequests`` with the ``held_out`` phrasings, never trained on):
its category, its brand, an exclusion of a brand that is in the unsteered top-10 but not the target's, and title
keywords that the serving parser turns into no rule. Each is put in the served chat prompt (dialogue + the parser's
constraints line) and ranked by the trie beam search:

- ``model_only``: no enforcement (only history items banned): share of the top-10 satisfying the request vs the
  unsteered top-10 (a neutral message) of the same user, and the target's Recall@10 with vs without the request;
- ``enforced``: the items breaking the parsed constraints are banned in the trie: success (every item satisfies
  the request) and Recall@10;
- ``keyword``: the keyword requests, which only the model can follow.

Unsteered Recall@10 is also measured with the plain stage-1 prompt (``recall@10_plain_prompt``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from think_rec.data.schema import RecDataset, column
from think_rec.data.split import history_exclusion, leave_one_out, sample_users
from think_rec.decoding.search import beam_search
from think_rec.finetune.align import train_align
from think_rec.finetune.align_config import load_align_config
from think_rec.finetune.run_state import MANIFEST
from think_rec.finetune.steering_data import Request, SteeringRequests, steering_templates
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.artefacts import RecModel, model_codebook
from think_rec.prompts import chat_example, render_recommend_prompt

from .bench_rec import DATASETS
from .report import write_report

RECIPE = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "steer_tiny.yaml"
STEERED = ("category", "brand", "exclude_brand")  # the parser turns these into rules
KINDS = (*STEERED, "keywords")


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _share(ranked: Sequence[str], request: Request, catalog) -> float:
    return sum(request.satisfied_by(catalog[i]) for i in ranked) / len(ranked) if ranked else 0.0


class Ranker:
    """A model's trie beam search over token-id prompts, top-``k`` item ids per prompt."""

    def __init__(self, model_dir: str | Path, codebook: SIDCodebook, k: int, num_beams: int):
        rec = RecModel.load(model_dir, codebook)
        self.model, self.processor, self.trie = rec.model, rec.processor, rec.trie
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.k, self.num_beams = k, num_beams

    def ids(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text)["input_ids"]

    def rank(self, prompts: Sequence[list[int]], banned: Sequence[set[str]]) -> list[list[str]]:
        rows = beam_search(self.model, self.processor, prompts, self.trie, num_beams=self.num_beams, k=self.k,
                           exclude=list(banned))
        return [[item for item, _ in row] for row in rows]


def evaluate(ranker: Ranker, data: RecDataset, codebook: SIDCodebook, histories: Sequence[list[str]],
             targets: Sequence[str], *, exclude_history: bool, seed: int = 0) -> list[dict[str, Any]]:
    """The three result rows for these test examples (see the module docstring)."""
    catalog, k = data.catalog.by_id, ranker.k
    coded = [catalog[i] for i in data.catalog.ids if i in codebook.codes]
    requests = SteeringRequests(coded, seed=seed, phrasings="held_out")
    seen = [set(h) if exclude_history else set() for h in histories]
    neutral = [requests.request("neutral", catalog[t]).text for t in targets]
    unsteered = ranker.rank([ranker.ids(chat_example(h, [n], [], None, catalog, codebook)["messages"])
                             for h, n in zip(histories, neutral)], seen)
    plain = ranker.rank([ranker.ids(render_recommend_prompt(h, catalog, codebook, ranker.processor,
                                                            with_images=False).messages) for h in histories], seen)
    cases, prompts, free, enforced = [], [], [], []
    for u, (h, t) in enumerate(zip(histories, targets)):
        for kind in KINDS:
            # an exclusion names a brand the unsteered answer holds (the target's excepted)
            req = requests.request(kind, catalog[t], [catalog[i] for i in unsteered[u]])
            if req is None:
                continue
            rules = requests.constraints([req.text])
            if not rules.allows(catalog[t]) or (kind == "keywords") == bool(rules.describe()):
                continue  # parsed into a rule excluding the target, keywords parsed into a rule, or a name missed
            cases.append((u, kind, req))
            chat = chat_example(h, [req.text], rules.describe(), None, catalog, codebook)
            prompts.append(ranker.ids(chat["messages"]))
            free.append(seen[u])
            if kind in STEERED:
                enforced.append((len(cases) - 1, seen[u] | {it["item_id"] for it in coded if not rules.allows(it)}))
    steered = ranker.rank(prompts, free)
    forced = dict(zip([c for c, _ in enforced],
                      ranker.rank([prompts[c] for c, _ in enforced], [b for _, b in enforced])))

    def stats(kinds: tuple[str, ...], ranking: dict[int, list[str]] | list[list[str]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {m: [] for m in ("share", "share0", "recall", "recall0", "success")}
        for c, (u, kind, req) in enumerate(cases):
            if kind not in kinds:
                continue
            ranked = ranking[c]
            out["share"].append(_share(ranked, req, catalog))
            out["share0"].append(_share(unsteered[u], req, catalog))
            out["recall"].append(float(targets[u] in ranked[:k]))
            out["recall0"].append(float(targets[u] in unsteered[u][:k]))
            out["success"].append(float(bool(ranked) and all(req.satisfied_by(catalog[i]) for i in ranked)))
        return out

    def row(system: str, kinds: tuple[str, ...], ranking, keys: tuple[str, ...]) -> dict[str, Any]:
        names = {"share": "share_satisfying", "share0": "share_satisfying_unsteered", "success": "success_rate",
                 "recall": "recall@10_with_request", "recall0": "recall@10_without_request"}
        total = stats(kinds, ranking)
        out: dict[str, Any] = {"system": system, "prompts": len(total["share"]),
                               **{names[m]: _mean(total[m]) for m in keys}}
        if len(kinds) > 1:
            for kind in kinds:
                part = stats((kind,), ranking)
                out.update({f"{kind}.prompts": len(part["share"]),
                            **{f"{kind}.{names[m]}": _mean(part[m]) for m in keys}})
        return out

    recall_chat = _mean([float(t in r[:k]) for t, r in zip(targets, unsteered)])
    recall_plain = _mean([float(t in r[:k]) for t, r in zip(targets, plain)])
    return [{**row("model_only", STEERED, steered, ("share", "share0", "success", "recall", "recall0")),
             "recall@10_unsteered": recall_chat, "recall@10_plain_prompt": recall_plain},
            row("enforced", STEERED, forced, ("success", "recall", "recall0")),
            row("keyword", ("keywords",), steered, ("share", "share0", "recall", "recall0"))]


def train_steering(run_dir: Path, budget_minutes: float, seed: int = 0, retrain: bool = False,
                   recipe: str | Path = RECIPE) -> tuple[Path, float | None]:
    """The steering chat phase (``recipe``) from ``run_dir/align/sequence/merged`` into ``run_dir/steer``; an existing
    model there is reused unless ``retrain``. Returns the model folder and the training seconds (None: reused)."""
    base = run_dir / "align" / "sequence" / "merged"
    if not (base / MANIFEST).is_file():
        raise FileNotFoundError(f"{base}: no stage-1 sequence model; run `think-rec bench rec` for this dataset first")
    final = run_dir / "steer" / "final"
    if (final / MANIFEST).is_file() and not retrain:
        return final, None
    config = load_align_config(recipe, model=str(base), data_dir=str(run_dir / "data"), sids_dir=str(run_dir / "sids"),
                               output_dir=str(run_dir / "steer"), time_budget_minutes=budget_minutes, seed=seed,
                               overwrite=True)
    start = time.perf_counter()
    return train_align(config), time.perf_counter() - start


def run(dataset: str = "scientific", run_dir: str | Path = "runs/bench-rec/scientific", budget_minutes: float = 8.0,
        users: int = 2000, k: int = 10, num_beams: int = 20, out_dir: str | Path = "eval/results", seed: int = 0,
        retrain: bool = False, split: str = "test") -> dict[str, Any]:
    """Train (or reuse) the steering model of a stage-1 run, score ``users`` seeded users of ``split`` ->
    ``out_dir/steering.{json,md,png}`` (test) or ``steering_valid.*`` (valid: for recipe choices)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, got {split!r}")
    run_dir = Path(run_dir)
    model_dir, train_seconds = train_steering(run_dir, budget_minutes, seed, retrain)
    config = load_align_config(RECIPE)
    data, codebook = RecDataset.load(run_dir / "data"), SIDCodebook.load(run_dir / "sids")
    folds = leave_one_out(data.interactions, max_history=config.max_history)
    exclude = history_exclusion(folds)
    scored = sample_users(folds.valid if split == "valid" else folds.test, users, seed)
    start = time.perf_counter()
    codebook = model_codebook(codebook, model_dir)
    ranker = Ranker(model_dir, codebook, k, num_beams)
    rows = evaluate(ranker, data, codebook, column(scored, "history"), column(scored, "target"),
                    exclude_history=exclude, seed=seed)
    payload = {"benchmark": "steering", "dataset": dataset, "split": split, "users": len(scored), "k": k,
               "num_beams": num_beams, "budget_minutes": budget_minutes,
               "train_seconds": None if train_seconds is None else round(train_seconds),
               "eval_seconds": round(time.perf_counter() - start), "model": str(model_dir),
               "recipe": RECIPE.name, "max_history": config.max_history, "exclude_history": exclude, "seed": seed,
               "phrasings": steering_templates()["held_out"], "rows": rows}
    name = "steering" if split == "test" else "steering_valid"
    write_report(name, payload, out_dir, metric_keys=["share_satisfying", "share_satisfying_unsteered", "success_rate",
                                                      "recall@10_with_request", "recall@10_without_request"])
    return payload
