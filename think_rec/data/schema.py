"""The two tables every stage reads: a ``Catalog`` of items and the users' ``Interactions``.

Both are ``datasets.Dataset`` objects stored as Arrow on disk, so they load lazily and
map/filter with the HF ecosystem. ``RecDataset`` pairs them and writes ``stats.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import datasets

from .atomic import atomic_folder
from .errors import DataError
from .images import absolute_images, store_images

ITEM_FEATURES = datasets.Features(
    {
        "item_id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "description": datasets.Value("string"),
        "brand": datasets.Value("string"),
        "categories": datasets.List(datasets.Value("string")),
        "price": datasets.Value("float64"),  # None when unknown
        "image": datasets.Value("string"),  # local path or URL; None when absent
    }
)
INTERACTION_FEATURES = datasets.Features(
    {
        "user_id": datasets.Value("string"),
        "item_ids": datasets.List(datasets.Value("string")),  # chronological
        "timestamps": datasets.List(datasets.Value("int64")),  # empty when unknown
    }
)


def column(table: datasets.Dataset, name: str) -> list:
    """A column as Python lists, through Arrow (``table[name]`` is ~10x slower in datasets 5)."""
    return table.select_columns([name]).to_dict()[name]


def with_images(items: datasets.Dataset, images: list[str | None]) -> datasets.Dataset:
    """``items`` with its ``image`` column replaced (in memory; the last column, as in ``ITEM_FEATURES``)."""
    return items.remove_columns("image").add_column("image", images, feature=ITEM_FEATURES["image"])


def make_item(item_id: str, title: str = "", description: str = "", brand: str = "",
              categories: Iterable[str] = (), price: float | None = None,
              image: str | None = None) -> dict[str, Any]:
    """One catalog row with every field present."""
    return {"item_id": str(item_id), "title": title or "", "description": description or "",
            "brand": brand or "", "categories": list(categories), "price": price, "image": image}


@dataclass
class Catalog:
    """Items keyed by ``item_id`` (strings), in a fixed order."""

    items: datasets.Dataset

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> "Catalog":
        rows = [make_item(**r) for r in rows]
        ids = [r["item_id"] for r in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"catalog: item_id: duplicate id {dup!r}")
        return cls(datasets.Dataset.from_list(rows, features=ITEM_FEATURES))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return self.items["item_id"]

    @property
    def index(self) -> dict[str, int]:
        if not hasattr(self, "_index"):
            self._index = {item_id: i for i, item_id in enumerate(self.ids)}
        return self._index

    @property
    def by_id(self) -> dict[str, dict[str, Any]]:
        """``item_id -> row`` as plain dicts (built once; the fast lookup for prompts and serving)."""
        if not hasattr(self, "_by_id"):
            self._by_id = dict(zip(self.ids, self.items.to_list()))
        return self._by_id

    def __getitem__(self, item_id: str) -> dict[str, Any]:
        return self.by_id[item_id]

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index

    def texts(self) -> list[str]:
        """One descriptive string per item (title, brand, categories, description)."""
        out = []
        for r in self.items:
            parts = [r["title"], r["brand"], " > ".join(r["categories"]), r["description"][:300]]
            out.append(". ".join(p for p in parts if p))
        return out

    def has_text(self) -> bool:
        """Whether some item has a title, brand, category or description (``texts`` not all empty)."""
        return any(self.texts())


@dataclass
class Interactions:
    """One row per user: chronological ``item_ids`` (and ``timestamps`` when known)."""

    table: datasets.Dataset

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> "Interactions":
        rows = [{"user_id": str(r["user_id"]), "item_ids": [str(i) for i in r["item_ids"]],
                 "timestamps": list(r.get("timestamps") or [])} for r in rows]
        return cls(datasets.Dataset.from_list(rows, features=INTERACTION_FEATURES))

    def __len__(self) -> int:
        return len(self.table)

    @property
    def sequences(self) -> list[list[str]]:
        return column(self.table, "item_ids")

    @property
    def users(self) -> list[str]:
        return column(self.table, "user_id")


BASE_STATS = ("name", "users", "items", "items_interacted", "interactions", "min_seq_len", "max_seq_len",
              "mean_seq_len", "density", "items_with_image", "items_with_price")


@dataclass
class RecDataset:
    """A catalog, its users' interactions and where they came from."""

    name: str
    catalog: Catalog
    interactions: Interactions
    extra_stats: dict[str, Any] = field(default_factory=dict)  # e.g. dropped_rows, kcore

    def stats(self) -> dict[str, Any]:
        lengths = [len(s) for s in self.interactions.sequences] or [0]
        used = {i for s in self.interactions.sequences for i in s}
        n_items = len(self.catalog)
        return {
            "name": self.name,
            "users": len(self.interactions),
            "items": n_items,
            "items_interacted": len(used),
            "interactions": sum(lengths),
            "min_seq_len": min(lengths),
            "max_seq_len": max(lengths),
            "mean_seq_len": round(sum(lengths) / max(len(lengths), 1), 3),
            "density": round(sum(lengths) / max(len(lengths) * n_items, 1), 6),
            "items_with_image": sum(1 for x in self.catalog.items["image"] if x),
            "items_with_price": sum(1 for x in self.catalog.items["price"] if x is not None),
            **self.extra_stats,
        }

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
        """Write ``out_dir`` atomically (see ``write``); an existing one only with ``overwrite``."""
        with atomic_folder(out_dir, overwrite) as tmp:
            return self.write(tmp)

    def write(self, folder: Path) -> dict[str, Any]:
        """Fill the empty ``folder``: local images linked/copied under it (stored relative to it),
        then ``catalog/``, ``interactions/`` and, last, ``stats.json``. Refuses a dataset without users."""
        if not len(self.interactions):
            after = f" after k-core {self.extra_stats['kcore']}" if "kcore" in self.extra_stats else ""
            raise ValueError(f"{self.name}: 0 users{after}; nothing written")
        images = store_images(column(self.catalog.items, "image"), folder)
        items = with_images(self.catalog.items, images)
        items.save_to_disk(str(folder / "catalog"))
        self.interactions.table.save_to_disk(str(folder / "interactions"))
        stats = self.stats()
        (folder / "stats.json").write_text(json.dumps(stats, indent=2))
        return stats

    @classmethod
    def load(cls, data_dir: str | Path) -> "RecDataset":
        """A prepared folder, checked against its ``stats.json``; image paths come back absolute,
        each checked to lie inside it."""
        d = Path(data_dir)
        if not (d / "stats.json").exists():
            raise FileNotFoundError(f"{d}: not a prepared data folder (no stats.json); "
                                    "run `think-rec data prepare` first")
        saved = json.loads((d / "stats.json").read_text())
        items = datasets.load_from_disk(str(d / "catalog"))
        table = datasets.load_from_disk(str(d / "interactions"))
        if (len(items), len(table)) != (saved.get("items"), saved.get("users")):
            raise DataError(str(d / "stats.json"), None, None, f"{len(items)} items and {len(table)} users on "
                            f"disk, stats.json says {saved.get('items')} and {saved.get('users')}; "
                            "re-run `think-rec data prepare`")
        images = absolute_images(d, column(items, "image"))
        ds = cls(saved.get("name", d.name), Catalog(with_images(items, images)), Interactions(table))
        ds.extra_stats = {k: v for k, v in saved.items() if k not in BASE_STATS}
        return ds
