"""A generated shop: items with category paths, attributes, prices, text and images, and users whose
histories follow latent preferences, so that models have something measurable to learn.

Items: each belongs to a sub-category (3 per top category) and a price band (budget / mid / premium);
brand, colour, material and size are attributes that appear in the title, the description and the
image (background = top category, shape = sub-category, fill = colour, pattern = material, size = size).

Users prefer one or two top categories and a price band. Each next item is, by chance,
- the previous item's *complement* (a fixed item of the sub-category that follows the previous one's),
- a popular item of that following sub-category in the previous item's band, or
- a fresh popular item from the user's preferred categories and band.
The first two depend on order, so an order-aware model beats popularity. Everything is vectorised
over users, so 100k items and users take a few seconds without images.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .schema import INTERACTION_FEATURES, ITEM_FEATURES, Catalog, Interactions, RecDataset

SHOP = [
    ("Kitchen", [("Kettles", "kettle"), ("Cookware", "frying pan"), ("Knives", "chef knife")]),
    ("Outdoor", [("Tents", "tent"), ("Backpacks", "backpack"), ("Lanterns", "lantern")]),
    ("Electronics", [("Headphones", "headphones"), ("Chargers", "charger"), ("Speakers", "speaker")]),
    ("Toys", [("Puzzles", "puzzle"), ("Building Blocks", "block set"), ("Plush", "plush bear")]),
    ("Beauty", [("Lipstick", "lipstick"), ("Skin Care", "moisturiser"), ("Fragrance", "perfume")]),
    ("Office", [("Notebooks", "notebook"), ("Pens", "pen set"), ("Desk Lamps", "desk lamp")]),
    ("Garden", [("Planters", "planter"), ("Hoses", "garden hose"), ("Pruning", "pruning shears")]),
    ("Sports", [("Yoga", "yoga mat"), ("Hydration", "water bottle"), ("Weights", "dumbbell")]),
    ("Pet Supplies", [("Leashes", "leash"), ("Pet Beds", "pet bed"), ("Bowls", "pet bowl")]),
    ("Home Decor", [("Cushions", "cushion"), ("Vases", "vase"), ("Candles", "candle")]),
    ("Fashion", [("Scarves", "scarf"), ("Hats", "hat"), ("Bags", "tote bag")]),
    ("Tools", [("Hammers", "hammer"), ("Screwdrivers", "screwdriver"), ("Measuring", "tape measure")]),
]
COLOURS = [("red", (214, 39, 40)), ("blue", (31, 119, 180)), ("green", (44, 160, 44)), ("black", (20, 20, 20)),
           ("white", (245, 245, 245)), ("yellow", (240, 200, 30)), ("purple", (148, 103, 189)),
           ("orange", (255, 127, 14)), ("pink", (240, 120, 190)), ("grey", (127, 127, 127))]
MATERIALS = ["steel", "bamboo", "cotton", "plastic", "glass", "leather"]
SIZES = ["small", "medium", "large"]
BANDS = ["Budget-friendly", "Mid-range", "Premium"]
SYLLABLES = ["Ar", "Bel", "Cor", "Dun", "El", "Fen", "Gal", "Hol", "Iv", "Jor", "Kel", "Lum", "Mor", "Nor"]
ENDINGS = ["ex", "ia", "on", "ora"]
SUBS_PER_CAT, BRANDS_PER_CAT = 3, 4


def category_tree(n_categories: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """``n_categories`` top categories with their (sub-category, noun) pairs."""
    extra = [(f"Category {c}", [(f"Type {c}.{j}", f"type {c}.{j} item") for j in range(SUBS_PER_CAT)])
             for c in range(len(SHOP), n_categories)]
    return (SHOP + extra)[:n_categories]


def generate_catalog(n_items: int, n_users: int, *, seed: int = 0, n_categories: int = 8,
                     with_images: bool = True, image_dir: str | Path | None = None,
                     history_len: tuple[int, int] = (5, 20)) -> RecDataset:
    """A synthetic ``RecDataset``; images (64x64 PNG) go to ``image_dir`` when ``with_images``."""
    n_sub = n_categories * SUBS_PER_CAT
    n_groups = n_sub * len(BANDS)
    if n_categories < 1 or n_items < n_groups:
        raise ValueError(f"need n_categories >= 1 and n_items >= {n_groups} (9 per category), "
                         f"got {n_categories} and {n_items}")
    lo, hi = history_len
    if not 1 <= lo <= hi:
        raise ValueError(f"history_len must be (min, max) with 1 <= min <= max, got {history_len}")
    if with_images and image_dir is None:
        raise ValueError("with_images=True needs an image_dir")
    rng = np.random.default_rng(seed)
    tree = category_tree(n_categories)

    # items: every (sub-category, band) group gets items; popularity order inside a group
    group = rng.permutation(np.arange(n_items) % n_groups)
    sub, band = group // len(BANDS), group % len(BANDS)
    top = sub // SUBS_PER_CAT
    brand = top * BRANDS_PER_CAT + rng.integers(0, BRANDS_PER_CAT, n_items)
    colour = rng.integers(0, len(COLOURS), n_items)
    material = rng.integers(0, len(MATERIALS), n_items)
    size = rng.integers(0, len(SIZES), n_items)
    base = 8.0 * 1.5 ** (np.arange(n_categories) % 5)
    price = np.round(base[top] * np.array([0.5, 1.0, 2.2])[band] * rng.lognormal(0, 0.2, n_items), 2)
    order = np.lexsort((rng.random(n_items), group))  # items grouped, random popularity rank inside
    offsets = np.searchsorted(group[order], np.arange(n_groups))
    sizes = np.bincount(group, minlength=n_groups)

    def draw(g: np.ndarray, alpha: float) -> np.ndarray:
        """An item of each group ``g``; ``alpha`` > 1 favours the group's popular head."""
        pos = np.minimum((sizes[g] * rng.random(len(g)) ** alpha).astype(np.int64), sizes[g] - 1)
        return order[offsets[g] + pos]

    succ = rng.permutation(n_sub)  # the sub-category bought after each one
    complement = draw(succ[sub] * len(BANDS) + band, 1.0)

    # users: preferred categories and band; sequences generated step by step for all users at once
    cat_pop = 1.0 / (1 + rng.permutation(n_categories)) ** 0.7
    pref = rng.choice(n_categories, size=(n_users, 2), p=cat_pop / cat_pop.sum())
    pref[:, 1] = np.where(rng.random(n_users) < 0.5, pref[:, 0], pref[:, 1])
    user_band = rng.integers(0, len(BANDS), n_users)
    lengths = rng.integers(lo, hi + 1, n_users)

    def fresh() -> np.ndarray:
        cat = np.where(rng.random(n_users) < 0.7, pref[:, 0], pref[:, 1])
        s = cat * SUBS_PER_CAT + rng.integers(0, SUBS_PER_CAT, n_users)
        b = np.where(rng.random(n_users) < 0.8, user_band, rng.integers(0, len(BANDS), n_users))
        return draw(s * len(BANDS) + b, 2.0)

    seq = np.empty((n_users, hi), dtype=np.int64)
    seq[:, 0] = fresh()
    for t in range(1, hi):
        prev, r = seq[:, t - 1], rng.random(n_users)
        follow = draw(succ[sub[prev]] * len(BANDS) + band[prev], 2.0)
        seq[:, t] = np.where(r < 0.35, complement[prev], np.where(r < 0.6, follow, fresh()))
    start = 1_600_000_000 + rng.integers(0, 30_000_000, n_users)
    stamps = start[:, None] + np.cumsum(rng.integers(600, 7 * 86_400, (n_users, hi)), axis=1)

    ids = [str(i) for i in range(n_items)]
    k = len(SYLLABLES) * len(ENDINGS)
    brands = [SYLLABLES[b % len(SYLLABLES)] + ENDINGS[b // len(SYLLABLES) % len(ENDINGS)]
              + (f" {b // k}" if b >= k else "") for b in range(n_categories * BRANDS_PER_CAT)]
    nouns = [noun for _, subs in tree for _, noun in subs]
    paths = [[name, s] for name, subs in tree for s, _ in subs]
    titles, descriptions = [], []
    for i in range(n_items):
        c, m, z, s, b = COLOURS[colour[i]][0], MATERIALS[material[i]], SIZES[size[i]], sub[i], band[i]
        titles.append(f"{brands[brand[i]]} {c} {m} {nouns[s]} ({z})")
        descriptions.append(f"A {z} {c} {m} {nouns[s]} by {brands[brand[i]]}, from our "
                            f"{paths[s][0]} > {paths[s][1]} range. {BANDS[b]} at ${price[i]:.2f}.")
    images: list[str | None] = [None] * n_items
    if with_images:
        out = Path(image_dir)
        out.mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(n_items), desc="images", leave=False):
            images[i] = str(out / f"{ids[i]}.png")
            render(top[i], n_categories, sub[i] % 6, COLOURS[colour[i]][1], material[i], size[i]).save(images[i])
    names = np.array(ids)
    flat_paths = np.array([c for p in paths for c in p])[(sub[:, None] * 2 + np.arange(2)).ravel()]
    catalog = Catalog(arrow_dataset(ITEM_FEATURES, {
        "item_id": pa.array(ids), "title": pa.array(titles), "description": pa.array(descriptions),
        "brand": pa.array(np.array(brands)[brand]),
        "categories": pa.ListArray.from_arrays(np.arange(0, 2 * n_items + 1, 2, dtype=np.int32), flat_paths),
        "price": pa.array(price), "image": pa.array(images, pa.string())}))
    mask = np.arange(hi)[None, :] < lengths[:, None]
    offsets32 = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    interactions = Interactions(arrow_dataset(INTERACTION_FEATURES, {
        "user_id": pa.array([f"u{u}" for u in range(n_users)]),
        "item_ids": pa.ListArray.from_arrays(offsets32, pa.array(names[seq[mask]])),
        "timestamps": pa.ListArray.from_arrays(offsets32, pa.array(stamps[mask].astype(np.int64)))}))
    return RecDataset(f"synthetic-{n_items}x{n_users}-seed{seed}", catalog, interactions,
                      {"source": "synthetic", "seed": seed})


def arrow_dataset(features: datasets.Features, columns: dict[str, pa.Array]) -> datasets.Dataset:
    """A ``datasets.Dataset`` straight from Arrow columns (no per-row encoding)."""
    table = pa.Table.from_pydict(columns).cast(features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def render(top: int, n_top: int, shape: int, rgb: tuple[int, int, int], material: int, size: int) -> Image.Image:
    """A 64x64 product picture: background by category, shape, fill colour, pattern, size."""
    bg = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(top / n_top, 0.18, 0.97))
    img = Image.new("RGB", (64, 64), bg)
    d = ImageDraw.Draw(img)
    r = (14, 20, 26)[size]
    box = (32 - r, 32 - r, 32 + r, 32 + r)
    if shape == 0:
        d.ellipse(box, fill=rgb, outline=(0, 0, 0))
    elif shape == 1:
        d.rectangle(box, fill=rgb, outline=(0, 0, 0))
    else:
        sides = (3, 4, 5, 6)[shape - 2]
        d.regular_polygon((32, 32, r), sides, fill=rgb, outline=(0, 0, 0))
    ink = (255, 255, 255) if sum(rgb) < 300 else (0, 0, 0)
    if material == 0:  # steel: horizontal stripes
        for y in range(32 - r, 32 + r, 6):
            d.line((32 - r // 2, y, 32 + r // 2, y), fill=ink)
    elif material == 1:  # bamboo: vertical stripes
        for x in range(32 - r // 2, 32 + r // 2, 6):
            d.line((x, 32 - r // 2, x, 32 + r // 2), fill=ink)
    elif material == 2:  # cotton: dots
        for x in range(32 - r // 2, 32 + r // 2, 6):
            for y in range(32 - r // 2, 32 + r // 2, 6):
                d.point((x, y), fill=ink)
    elif material == 4:  # glass: a highlight
        d.ellipse((32 - r // 2, 32 - r // 2, 32, 32), outline=ink)
    elif material == 5:  # leather: a border stitch
        d.rectangle((4, 4, 59, 59), outline=ink)
    return img
