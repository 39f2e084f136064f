"""Leave-one-out split: last item test, second-to-last valid, the rest train."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import datasets

from .schema import Interactions, column

log = logging.getLogger(__name__)

EXAMPLE_FEATURES = datasets.Features(
    {
        "user_id": datasets.Value("string"),
        "history": datasets.List(datasets.Value("string")),
        "target": datasets.Value("string"),
    }
)


@dataclass
class LeaveOneOut:
    """``train`` holds each user's sequence without its last two items (for sequence models);
    ``valid``/``test`` hold one (history, target) example per user."""

    train: datasets.Dataset  # user_id, item_ids
    valid: datasets.Dataset  # user_id, history, target
    test: datasets.Dataset
    max_history: int
    heldout: frozenset[str] = frozenset()  # users whose last training item ``train`` withholds (``hold_out``)

    def selection_users(self, n: int | None, seed: int = 0) -> datasets.Dataset:
        """A seeded sample of ``n`` valid examples to select on: the held-out users' when there are any."""
        if not self.heldout:
            return sample_users(self.valid, n, seed)
        return sample_users(self.valid.filter(lambda u: u in self.heldout, input_columns="user_id"), n, seed)

    def train_examples(self, min_history: int = 1) -> datasets.Dataset:
        """Every next-item example inside the training sequences (history capped)."""
        rows = []
        for user, seq in zip(column(self.train, "user_id"), column(self.train, "item_ids")):
            for t in range(min_history, len(seq)):
                rows.append({"user_id": user, "history": seq[max(0, t - self.max_history):t],
                             "target": seq[t]})
        return datasets.Dataset.from_list(rows, features=EXAMPLE_FEATURES)


def leave_one_out(interactions: Interactions, max_history: int = 50,
                  min_length: int = 3) -> LeaveOneOut:
    """Split each user's sequence; users shorter than ``min_length`` are left out."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    train, valid, test = [], [], []
    for user, seq in zip(interactions.users, interactions.sequences):
        if len(seq) < min_length:
            continue
        train.append({"user_id": user, "item_ids": seq[:-2]})
        valid.append({"user_id": user, "history": seq[:-2][-max_history:], "target": seq[-2]})
        test.append({"user_id": user, "history": seq[:-1][-max_history:], "target": seq[-1]})
    seq_features = datasets.Features({"user_id": datasets.Value("string"),
                                      "item_ids": datasets.List(datasets.Value("string"))})
    return LeaveOneOut(
        train=datasets.Dataset.from_list(train, features=seq_features),
        valid=datasets.Dataset.from_list(valid, features=EXAMPLE_FEATURES),
        test=datasets.Dataset.from_list(test, features=EXAMPLE_FEATURES),
        max_history=max_history,
    )


def hold_out(split: LeaveOneOut, share: float, seed: int = 0, min_users: int = 1) -> LeaveOneOut:
    """``split`` with the last training item of a seeded ``share`` of users (those with two or more) withheld from
    ``train``. Their valid history then ends with an item the model never saw as their context, as every test
    history does; selecting on them does not reward memorised training sequences as in-sample valid users do.
    Fewer than ``min_users`` held-out users are too few to choose on: ``split`` is returned as it is (logged)."""
    if not 0 <= share < 1:
        raise ValueError(f"heldout share: expected a share in [0, 1), got {share!r}")
    users, sequences = column(split.train, "user_id"), column(split.train, "item_ids")
    eligible = [u for u, seq in zip(users, sequences) if len(seq) >= 2]
    count = round(share * len(eligible))
    if not share or count < max(min_users, 1):
        if share:
            log.warning("held-out selection off: %d of %d users is under the %d it needs; selecting on all valid "
                        "users", count, len(eligible), min_users)
        return split
    held = frozenset(random.Random(seed).sample(eligible, count))
    train = datasets.Dataset.from_dict(
        {"user_id": users, "item_ids": [seq[:-1] if u in held else seq for u, seq in zip(users, sequences)]},
        features=split.train.features)
    return replace(split, train=train, heldout=held)


def sample_users(examples: datasets.Dataset, n: int | None, seed: int = 0) -> datasets.Dataset:
    """A seeded sample of ``n`` rows (all rows when ``n`` is None or not smaller), in their original order."""
    if n is None or n >= len(examples):
        return examples
    return examples.select(sorted(random.Random(seed).sample(range(len(examples)), n)))


def has_repeats(sequences: Iterable[Sequence[str]]) -> bool:
    """True when some sequence holds an item twice (then history items must stay recommendable)."""
    return any(len(set(seq)) < len(seq) for seq in map(list, sequences))


def history_exclusion(split: LeaveOneOut) -> bool:
    """The project's one history-exclusion setting for a split: exclude history items when no user repeats an
    item in train + valid (test targets are never read)."""
    valid = dict(zip(column(split.valid, "user_id"), column(split.valid, "target")))
    return not has_repeats(list(seq) + [valid[u]] if u in valid else seq
                           for u, seq in zip(column(split.train, "user_id"), column(split.train, "item_ids")))
