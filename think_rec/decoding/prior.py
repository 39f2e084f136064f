"""The collaborative prior of the served ranking: item-transition counts ("what did people pick soon after
this item?") from the training split, saved beside the merged model with the weight chosen on valid users.

``MarkovModel`` counts, over the training sequences, how often item ``j`` follows item ``i``: directly (weight 1)
and, with ``window`` > 1, ``d`` positions later (weight ``span_decay**(d - 1)``); ``backward`` > 0 also counts
``j`` *before* ``i`` at that fraction. A user is scored from the last ``last_n`` items of their history, the most
recent weighing 1, the one before ``decay``, then ``decay**2`` ...::

    score(j) = sum_{t < last_n} decay**t * count(history[-1 - t] -> j)

The defaults (``window`` 1, ``backward`` 0) are the first-order Markov baseline of ``bench rec``; a model's prior
takes the ``MARKOV_CONFIGS`` entry its valid users rank best with (``finetune.served.choose_markov``).

``CollaborativePrior`` is what a trained model carries (``MODEL/prior.json``): the counts, the weight of
``log1p(score)`` in the fused ranking (``think_rec.decoding.ranking``), how many of its top items join the
model's beams as candidates, and the fingerprint of the data it was counted on. Weight 0 is the model alone.
A model with item tokens also records there the weight of its item-level head's log-probability in the same
fusion (``item_weight``, chosen on the same valid users).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

PRIOR_FILE = "prior.json"
PRIOR_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # the grid valid users choose from (32, its
# former top, was chosen on Scientific: the grid now reaches past it)
ITEM_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # the item head's grid (models with item tokens)


@dataclass
class MarkovConfig:
    last_n: int = 5  # history items that vote (the most recent ones)
    decay: float = 0.5  # weight of each older vote relative to the next newer one
    window: int = 1  # successors counted up to this many positions after an item
    span_decay: float = 0.5  # weight of a successor d positions later: span_decay ** (d - 1)
    backward: float = 0.0  # predecessors counted too, at this fraction of a successor's weight

    def __post_init__(self):
        if self.last_n < 1:
            raise ValueError(f"MarkovConfig.last_n must be >= 1, got {self.last_n}")
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"MarkovConfig.decay must be in [0, 1], got {self.decay}")
        if self.window < 1:
            raise ValueError(f"MarkovConfig.window must be >= 1, got {self.window}")
        if not 0.0 <= self.span_decay <= 1.0 or not 0.0 <= self.backward <= 1.0:
            raise ValueError(f"MarkovConfig.span_decay and backward must be in [0, 1], got {self.span_decay}, "
                             f"{self.backward}")

    @property
    def key(self) -> str:
        """The config as one string (``last_n=5,decay=0.5,...``): how ``prior.json`` names it."""
        return ",".join(f"{k}={v}" for k, v in asdict(self).items())


# the prior's choices on valid users: the first-order baseline and windowed / two-way co-occurrence
MARKOV_CONFIGS = tuple(MarkovConfig(decay=decay, window=window, span_decay=span, backward=backward)
                       for window, span in ((1, 0.5), (3, 0.5), (3, 0.7))
                       for decay in (0.3, 0.5) for backward in (0.0, 0.3))


class MarkovModel:
    """Successor counts ``transitions[i][j]`` (``j`` after ``i``, weighted by distance; see the module docstring)
    and item counts ``popularity``."""

    def __init__(self, train_sequences: Iterable[Sequence[str]], config: MarkovConfig | None = None):
        self.config = config or MarkovConfig()
        self.transitions: dict[str, Counter] = defaultdict(Counter)
        self.popularity: Counter = Counter()
        window, span, back = self.config.window, self.config.span_decay, self.config.backward
        for seq in train_sequences:
            seq = list(seq)
            self.popularity.update(seq)
            for d in range(1, window + 1):
                w = span ** (d - 1)
                for a, b in zip(seq, seq[d:]):
                    self.transitions[a][b] += w
                    if back:
                        self.transitions[b][a] += back * w
        self.transitions = dict(self.transitions)
        self._index()

    def _index(self) -> None:
        # most popular first; equal counts keep first appearance (Counter.most_common is stable)
        self.by_popularity: list[str] = [item for item, _ in self.popularity.most_common()]
        self.popularity_rank: dict[str, int] = {item: r for r, item in enumerate(self.by_popularity)}

    @classmethod
    def fit(cls, train_sequences: Iterable[Sequence[str]], config: MarkovConfig | None = None) -> "MarkovModel":
        """Same as the constructor."""
        return cls(train_sequences, config)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "popularity": dict(self.popularity),
                "transitions": {i: dict(c) for i, c in self.transitions.items()}}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MarkovModel":
        model = cls((), MarkovConfig(**values["config"]))
        model.popularity = Counter(values["popularity"])
        model.transitions = {i: Counter(c) for i, c in values["transitions"].items()}
        model._index()
        return model

    def scores(self, history: Sequence[str]) -> dict[str, float]:
        """``{item: score}`` for every item counted after (or, with ``backward``, before) one of the last
        ``last_n`` history items in training (items absent score 0). ``history`` is chronological (most recent
        last); the most recent item's counts weigh 1, the previous item's ``decay``, then ``decay**2`` ...
        Items in the history are not removed here (``rank`` does that with ``exclude``)."""
        out: dict[str, float] = defaultdict(float)
        weight = 1.0
        for item in reversed(list(history)[-self.config.last_n:]):
            for succ, count in self.transitions.get(item, {}).items():
                out[succ] += weight * count
            weight *= self.config.decay
        return dict(out)

    def rank(self, history: Sequence[str], k: int = 10, exclude: set[str] | None = None) -> list[str]:
        """The top ``k`` items: by ``scores(history)`` descending (zero scores dropped), ties by training
        popularity, then filled with the most popular items; nothing in ``exclude`` is returned."""
        exclude = exclude or set()
        worst = len(self.popularity_rank)
        scored = [(s, item) for item, s in self.scores(history).items() if s > 0 and item not in exclude]
        scored.sort(key=lambda si: (-si[0], self.popularity_rank.get(si[1], worst), si[1]))
        ranked = [item for _, item in scored[:k]]
        if len(ranked) < k:
            taken = set(ranked)
            for item in self.by_popularity:
                if item not in taken and item not in exclude:
                    ranked.append(item)
                    if len(ranked) == k:
                        break
        return ranked


@dataclass
class CollaborativePrior:
    """Transition counts + how the served ranking uses them (see the module docstring). ``selection`` records
    how the weight was chosen (valid users, NDCG@10 per weight)."""

    markov: MarkovModel
    weight: float = 0.0
    item_weight: float = 0.0  # the weight of the model's item-level head in the same fusion (0: none)
    top: int = 30  # the prior's top items that join the beams as candidates
    data_fingerprint: str = ""
    selection: dict[str, Any] = field(default_factory=dict)

    def candidates(self, history: Sequence[str], banned: set[str]) -> list[str]:
        """The prior's ``top`` items for ``history`` (popular items fill up), none of ``banned``."""
        return self.markov.rank(history, self.top, banned)

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / PRIOR_FILE
        values = {"weight": self.weight, "item_weight": self.item_weight, "top": self.top,
                  "data_fingerprint": self.data_fingerprint,
                  "selection": self.selection, "markov": self.markov.to_dict()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(values))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> "CollaborativePrior | None":
        """The prior saved beside a model, or None when it has none."""
        path = Path(model_dir) / PRIOR_FILE
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
            return cls(MarkovModel.from_dict(values["markov"]), float(values["weight"]),
                       float(values.get("item_weight", 0.0)), int(values["top"]), values["data_fingerprint"],
                       values.get("selection", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a think_rec prior ({type(e).__name__}: {e})") from e
