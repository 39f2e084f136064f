"""Leave-one-out invariants and the filters (k-core, consecutive duplicates)."""
from __future__ import annotations

from collections import Counter

import pytest

from think_rec.data.filters import kcore
from think_rec.data.loaders import load_source
from think_rec.data.schema import Catalog, Interactions, RecDataset
from think_rec.data.split import hold_out, leave_one_out


def check_leave_one_out(interactions: Interactions, max_history: int, min_length: int = 3) -> None:
    split = leave_one_out(interactions, max_history=max_history, min_length=min_length)
    table = interactions.table.to_dict()
    full = {u: s for u, s in zip(table["user_id"], table["item_ids"]) if len(s) >= min_length}
    train, valid, test = split.train.to_dict(), split.valid.to_list(), split.test.to_list()
    assert train["user_id"] == [r["user_id"] for r in valid] == [r["user_id"] for r in test] == list(full)
    for user, train_seq, valid, test in zip(train["user_id"], train["item_ids"], valid, test):
        seq = full[user]
        assert valid["target"] == seq[-2] and test["target"] == seq[-1]
        assert train_seq == seq[:-2]  # neither held-out position is trained on
        assert valid["history"] == seq[:-2][-max_history:] and test["history"] == seq[:-1][-max_history:]
        assert len(test["history"]) <= max_history and test["history"][-1] == seq[-2]
    examples = split.train_examples().to_dict()
    expected = [(u, s[max(0, t - max_history):t], s[t])
                for u, s in zip(train["user_id"], train["item_ids"]) for t in range(1, len(s))]
    assert list(zip(examples["user_id"], examples["history"], examples["target"])) == expected
    assert all(0 < len(h) <= max_history for h in examples["history"])


def test_leave_one_out_on_lcrec(shared_data):
    ds = load_source("lcrec", shared_data / "amazon18-scientific")
    check_leave_one_out(ds.interactions, max_history=5)


def test_leave_one_out_on_synthetic(synthetic_dataset):
    check_leave_one_out(synthetic_dataset.interactions, max_history=3, min_length=6)
    check_leave_one_out(synthetic_dataset.interactions, max_history=50)


def test_leave_one_out_rejects_bad_history():
    with pytest.raises(ValueError, match="max_history"):
        leave_one_out(Interactions.from_rows([{"user_id": "u", "item_ids": ["a", "b", "c"]}]), max_history=0)


def toy(seqs: dict[str, list[str]], n_items: int = 6) -> RecDataset:
    catalog = Catalog.from_rows([{"item_id": str(i)} for i in range(n_items)])
    rows = [{"user_id": u, "item_ids": s, "timestamps": list(range(len(s)))} for u, s in seqs.items()]
    return RecDataset("toy", catalog, Interactions.from_rows(rows))


def test_kcore_iterates_to_a_fixed_point():
    # item 3 is rare; dropping it makes u3 too short, which makes item 2 rare, and so on
    ds = toy({"u1": ["0", "1", "0", "1"], "u2": ["0", "1", "2"], "u3": ["2", "3"]})
    out = kcore(ds, 2)
    assert list(out.interactions.users) == ["u1", "u2"]
    assert list(out.interactions.sequences) == [["0", "1", "0", "1"], ["0", "1"]]
    assert out.interactions.table["timestamps"][1] == [0, 1]
    counts = Counter(i for s in out.interactions.sequences for i in s)
    assert min(counts.values()) >= 2 and min(len(s) for s in out.interactions.sequences) >= 2
    assert len(out.catalog) == 6 and out.stats()["kcore"] == 2  # catalog kept
    assert len(ds.interactions) == 3  # input untouched


def test_kcore_on_real_data_is_a_fixed_point(shared_data):
    out = kcore(load_source("amazon14", shared_data / "amazon14-beauty"), 6)
    seqs = out.interactions.table.to_dict()["item_ids"]
    counts = Counter(i for s in seqs for i in s)
    assert min(counts.values()) >= 6 and min(len(s) for s in seqs) >= 6
    assert out.stats()["kcore_rounds"] > 1 and 0 < sum(counts.values()) < 194687
    assert kcore(out, 6).interactions.table.to_dict()["item_ids"] == seqs


def test_hold_out_withholds_the_last_training_item_of_a_seeded_share_and_selects_on_them(synthetic_dataset):
    """Held-out users lose their last training item (valid and test untouched), so their valid history ends with an
    item never trained as their context, as test histories do; selection samples only them."""
    split = leave_one_out(synthetic_dataset.interactions, max_history=5)
    held = hold_out(split, 0.25, seed=3)
    assert hold_out(split, 0.0) is split and hold_out(split, 0.25, seed=3).heldout == held.heldout
    eligible = [u for u, s in zip(split.train["user_id"], split.train["item_ids"]) if len(s) >= 2]
    assert len(held.heldout) == round(0.25 * len(eligible)) and held.heldout <= set(eligible)
    assert held.heldout != hold_out(split, 0.25, seed=4).heldout
    for user, before, after in zip(split.train["user_id"], split.train["item_ids"], held.train["item_ids"]):
        assert after == (before[:-1] if user in held.heldout else before)
    assert held.valid is split.valid and held.test is split.test
    chosen = held.selection_users(10, seed=0)
    assert len(chosen) == 10 and set(chosen["user_id"]) <= held.heldout
    assert len(held.selection_users(None)) == len(held.heldout)
    assert len(split.selection_users(10)) == 10 and len(split.selection_users(None)) == len(split.valid)
    assert hold_out(split, 0.25, seed=3, min_users=len(held.heldout) + 1) is split  # too few to choose on
    with pytest.raises(ValueError, match="share in"):
        hold_out(split, 1.0)
