"""One handle on a trained model's artefacts: weights + processor, SID codebook, its trie, the catalog rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from think_rec.data.schema import RecDataset
from think_rec.decoding.trie import SIDTrie
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.loading import load_model


@dataclass
class RecModel:
    """``model`` (in eval mode) with its ``processor``, the ``codebook`` and its ``trie`` on the processor's vocabulary,
    and the ``dataset`` when one was given (``items``: its catalog's ``item_id -> row``)."""

    model: Any
    processor: Any
    codebook: SIDCodebook
    trie: SIDTrie
    dataset: RecDataset | None = None

    @classmethod
    def load(cls, model_dir: str | Path, sids: str | Path | SIDCodebook,
             data: str | Path | RecDataset | None = None) -> RecModel:
        """Each artefact once; ``sids`` and ``data`` are folders or already loaded."""
        model, processor = load_model(model_dir)
        model.eval()
        codebook = sids if isinstance(sids, SIDCodebook) else SIDCodebook.load(sids)
        dataset = data if data is None or isinstance(data, RecDataset) else RecDataset.load(data)
        return cls(model, processor, codebook, SIDTrie.from_codebook(codebook, processor), dataset)

    @property
    def items(self) -> dict[str, dict[str, Any]]:
        if self.dataset is None:
            raise ValueError("RecModel loaded without data: pass data= to RecModel.load")
        return self.dataset.catalog.by_id
