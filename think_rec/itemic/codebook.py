"""``SIDCodebook``: item <-> semantic ID <-> token strings, saved as JSON.

A SID is a fixed-length tuple of codes, one per level; level ``l`` code ``c`` is the token
``<s_{letter(l)}_{c}>`` and an item reads ``<|sid_begin|><s_a_12><s_b_7><s_c_200><|sid_end|>``.
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SID_BEGIN = "<|sid_begin|>"
SID_END = "<|sid_end|>"
FORMAT_VERSION = 1
_CODE_TOKEN = re.compile(r"<s_([a-z])_(\d+)>")
_SID_SPAN = re.compile(re.escape(SID_BEGIN) + r"((?:<s_[a-z]_\d+>)+)" + re.escape(SID_END))


def code_token(level: int, code: int) -> str:
    return f"<s_{string.ascii_lowercase[level]}_{code}>"


def item_token(index: int) -> str:
    """The item token of the ``index``-th item of a codebook (its row of the item-level output head)."""
    return f"<|i_{index}|>"


@dataclass
class SIDCodebook:
    """Unique SIDs for a catalog; ``codebook_sizes[l]`` codes exist at level ``l``. Two model properties (never
    saved with the codebook) set how a prompt writes history items: ``item_inputs`` (``with_item_inputs``) adds the
    item token after the SID (``history_tokens``), so the model reads an item-level embedding beside the codes;
    ``history_titles`` False (``with_history_titles``) writes the IDs alone, one item per line, without a title."""

    codes: dict[str, tuple[int, ...]]
    codebook_sizes: list[int]
    meta: dict[str, Any] = field(default_factory=dict)
    item_inputs: bool = False
    history_titles: bool = True

    def __post_init__(self) -> None:
        self.codes = {str(k): tuple(int(c) for c in v) for k, v in self.codes.items()}
        self._item_of = {v: k for k, v in self.codes.items()}
        self._index = {k: n for n, k in enumerate(self.codes)}
        if len(self._item_of) != len(self.codes):
            dup = Counter(self.codes.values()).most_common(1)[0][0]
            raise ValueError(f"SIDs are not unique: {dup} is shared by several items")
        for item, sid in self.codes.items():
            if len(sid) != self.levels or any(not 0 <= c < n for c, n in zip(sid, self.codebook_sizes)):
                raise ValueError(f"item {item!r}: SID {sid} does not fit codebook sizes {self.codebook_sizes}")

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    def __len__(self) -> int:
        return len(self.codes)

    def tokens(self, item_id: str) -> list[str]:
        """``[<|sid_begin|>, <s_a_..>, ..., <|sid_end|>]`` for one item."""
        return [SID_BEGIN, *(code_token(level, c) for level, c in enumerate(self.codes[item_id])), SID_END]

    def sid_string(self, item_id: str) -> str:
        return "".join(self.tokens(item_id))

    def history_tokens(self, item_id: str) -> list[str]:
        """How a history item is written in a prompt: its SID, then its item token when ``item_inputs``."""
        return self.tokens(item_id) + ([item_token(self._index[item_id])] if self.item_inputs else [])

    def history_string(self, item_id: str) -> str:
        return "".join(self.history_tokens(item_id))

    def with_item_inputs(self, item_inputs: bool = True) -> "SIDCodebook":
        """This codebook writing history items with (or without) their item token."""
        return self if item_inputs == self.item_inputs else replace(self, item_inputs=item_inputs)

    def with_history_titles(self, titles: bool = True) -> "SIDCodebook":
        """This codebook writing history lines with (or without) the item's title after its IDs."""
        return self if titles == self.history_titles else replace(self, history_titles=titles)

    def item_of(self, sid: tuple[int, ...]) -> str | None:
        return self._item_of.get(tuple(sid))

    def vocabulary(self) -> list[str]:
        """Every new token: the two delimiters, then each level's codes in order."""
        return [SID_BEGIN, SID_END] + [code_token(level, c) for level, n in enumerate(self.codebook_sizes)
                                       for c in range(n)]

    def item_tokens(self) -> list[str]:
        """One token per item, in ``codes`` order (``item_token``): the item-level head's output rows."""
        return [item_token(n) for n in range(len(self.codes))]

    def parse(self, text: str) -> list[str | None]:
        """Item ids of every ``<|sid_begin|>…<|sid_end|>`` span in ``text`` (None if not in catalog)."""
        out = []
        for span in _SID_SPAN.finditer(text):
            sid = tuple(int(c) for _, c in _CODE_TOKEN.findall(span.group(1)))
            out.append(self.item_of(sid))
        return out

    def stats(self) -> dict[str, Any]:
        """Utilisation per level (share of codes used) and items per leaf prefix."""
        used = [len({sid[level] for sid in self.codes.values()}) / n for level, n in enumerate(self.codebook_sizes)]
        prefix = Counter(sid[:-1] for sid in self.codes.values())
        return {
            "items": len(self.codes),
            "levels": self.levels,
            "codebook_sizes": self.codebook_sizes,
            "utilisation": [round(u, 4) for u in used],
            "max_items_per_prefix": max(prefix.values(), default=0),
            "mean_items_per_prefix": round(len(self.codes) / max(len(prefix), 1), 3),
            **{k: v for k, v in self.meta.items() if k.startswith("collision")},
        }

    def save(self, out_dir: str | Path) -> None:
        """``sids.json`` ({item_id: sid string}) plus ``sid_meta.json`` (codes and metadata)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sids.json").write_text(json.dumps({i: self.sid_string(i) for i in self.codes}, indent=0))
        meta = {"format_version": FORMAT_VERSION, "codebook_sizes": self.codebook_sizes,
                "levels": self.levels, **self.meta,
                "codes": {i: list(c) for i, c in self.codes.items()}}
        (out / "sid_meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, sid_dir: str | Path) -> "SIDCodebook":
        path = Path(sid_dir) / "sid_meta.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no codebook here; run `think-rec sids build` first")
        meta = json.loads(path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        codes = meta.pop("codes")
        sizes = meta.pop("codebook_sizes")
        for k in ("format_version", "levels"):
            meta.pop(k)
        return cls({i: tuple(c) for i, c in codes.items()}, sizes, meta)
