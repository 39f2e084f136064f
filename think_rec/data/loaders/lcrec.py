"""The LC-Rec / LETTER layout: ``X.inter.json`` (``{user_id: [item_id, ...]}`` in time order) and
``X.item.json`` (``{item_id: {title, description, brand, categories}}``, categories a comma-separated
path). Every sequence item must be in the item file; the catalog is the whole item file."""
from __future__ import annotations

from pathlib import Path

from ..schema import RecDataset
from .common import Builder, find_one, iter_json_object


def load(path: str | Path, *, skip_bad_rows: bool = False, name: str = "*") -> RecDataset:
    """Load the folder ``path``; ``name`` picks ``name.inter.json`` when there are several."""
    folder = Path(path)
    inter_file = find_one(folder, f"{name}.inter.json", "interaction file")
    prefix = inter_file.name[:-len(".inter.json")]
    item_file = find_one(folder, f"{prefix}.item.json", "item file")
    b = Builder(f"lcrec-{prefix}", folder, skip_bad_rows)
    b.add_item_file(item_file)
    for user, items, line in iter_json_object(inter_file):
        b.add_user(user, items, None, inter_file, line)
    return b.build()
