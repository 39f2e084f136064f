"""The synthetic shop: determinism, images that carry attributes, speed, and learnable order."""
from __future__ import annotations

import time
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from think_rec.data.split import leave_one_out
from think_rec.data.synthetic import generate_catalog


def test_fixture_has_images_and_structure(synthetic_dataset):
    ds = synthetic_dataset
    s = ds.stats()
    assert (s["users"], s["items"], s["items_with_image"], s["items_with_price"]) == (200, 120, 120, 120)
    assert 5 <= s["min_seq_len"] and s["max_seq_len"] <= 20
    for item in ds.catalog.items.select(range(10)):
        assert len(item["categories"]) == 2 and item["brand"] in item["title"]
        assert item["categories"][1] in item["description"] and item["price"] > 0
        with Image.open(item["image"]) as im:
            assert im.size == (64, 64) and im.format == "PNG"
    for row in ds.interactions.table.select(range(10)):
        assert row["timestamps"] == sorted(row["timestamps"]) and len(row["timestamps"]) == len(row["item_ids"])


def test_images_carry_colour(tmp_path):
    by_colour = defaultdict(list)
    for item in generate_catalog(40, 5, seed=1, n_categories=2, image_dir=tmp_path).catalog.items:
        colour = item["title"].split()[1]
        with Image.open(item["image"]) as im:
            by_colour[colour].append(np.asarray(im.convert("RGB"))[32, 32])  # the shape's centre
    red, blue = np.array(by_colour["red"]), np.array(by_colour["blue"])
    assert len(red) and len(blue)
    assert (red[:, 0] > red[:, 2]).mean() >= 0.5 and (blue[:, 2] > blue[:, 0]).mean() >= 0.5


def test_same_seed_same_data(tmp_path):
    a = generate_catalog(100, 50, seed=7, image_dir=tmp_path / "a")
    b = generate_catalog(100, 50, seed=7, image_dir=tmp_path / "b")
    c = generate_catalog(100, 50, seed=8, with_images=False)
    assert a.interactions.table.to_list() == b.interactions.table.to_list()
    assert a.catalog.items["title"] == b.catalog.items["title"]
    assert (tmp_path / "a" / "5.png").read_bytes() == (tmp_path / "b" / "5.png").read_bytes()
    assert a.interactions.sequences != c.interactions.sequences


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_items"):
        generate_catalog(10, 5, seed=0, with_images=False)
    with pytest.raises(ValueError, match="image_dir"):
        generate_catalog(100, 5, seed=0)
    with pytest.raises(ValueError, match="history_len"):
        generate_catalog(100, 5, seed=0, with_images=False, history_len=(4, 2))


def test_100k_items_without_images_is_fast():
    start = time.perf_counter()
    ds = generate_catalog(100_000, 20_000, seed=0, with_images=False)
    assert time.perf_counter() - start < 20  # ~1 s alone; generous for a shared 2-core machine
    assert len(ds.catalog) == 100_000 and len(ds.interactions) == 20_000
    assert len(set(ds.catalog.items["title"][:1000])) > 900


def test_order_aware_model_beats_popularity():
    ds = generate_catalog(500, 1000, seed=1, with_images=False)
    split = leave_one_out(ds.interactions)
    popularity = [i for i, _ in Counter(i for s in split.train["item_ids"] for i in s).most_common(10)]
    follows = defaultdict(Counter)  # a first-order Markov model of the training sequences
    for s in split.train["item_ids"]:
        for a, b in zip(s, s[1:]):
            follows[a][b] += 1
    hits_pop = hits_markov = 0
    for history, target in zip(split.test["history"], split.test["target"]):
        markov = [i for i, _ in follows[history[-1]].most_common(10)]
        markov += [i for i in popularity if i not in markov][:10 - len(markov)]
        hits_pop += target in popularity
        hits_markov += target in markov
    assert hits_markov > 3 * hits_pop > 0
