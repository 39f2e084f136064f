"""One handle on a trained model's artefacts: weights + processor, SID codebook, its trie, the catalog rows, the
collaborative prior and the configuration it is served with (``served.json``, written when stage 1 ends)."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from think_rec.data.schema import RecDataset
from think_rec.decoding.prior import CollaborativePrior
from think_rec.decoding.trie import SIDTrie
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.loading import load_model

SERVED_FILE = "served.json"
log = logging.getLogger(__name__)


@dataclass
class ServedConfig:
    """How a model is served and measured: what it was trained and selected with (``MODEL/served.json``)."""

    prompt: str = "chat"  # prompts/chat.yaml (think_rec.prompts.served_prompt)
    max_history: int = 20  # history items in the prompt (the latest)
    num_beams: int = 30  # trie beam width; the prior's candidates join the beams
    dtype: str = "float32"  # what the model was scored in (vLLM's "auto" would serve float32 weights in bf16)
    exclude_history: bool = True  # never recommend a history item (decided from train + valid, never test)
    think_ranking: str = "rationale"  # thinking ranks after the rationale, or "history": after an empty think
    follow_weight: float = 0.0  # weight of the rationale's claims in the thinking ranking (claims.ClaimChecker)
    rationale_samples: int = 1  # rationales drawn per request (the greedy one, then decoding.think.Draw samples)
    item_inputs: bool = False  # history items are written with their item token (SIDCodebook.with_item_inputs)
    history_titles: bool = True  # history lines carry the item's title (False: IDs alone, with_history_titles)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ranks_after_rationale(self) -> bool:
        """Thinking ranks the items after the rationale (else after an empty think: the rationale explains)."""
        return self.think_ranking == "rationale"

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / SERVED_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    def history_codebook(self, codebook: SIDCodebook) -> SIDCodebook:
        """``codebook`` writing history items as this model reads them (``item_inputs``, ``history_titles``)."""
        return codebook.with_item_inputs(self.item_inputs).with_history_titles(self.history_titles)

    @classmethod
    def load(cls, model_dir: str | Path, warn: bool = True) -> "ServedConfig":
        """The model's ``served.json``; the defaults for a model that has none (with a warning when ``warn``)."""
        path = Path(model_dir) / SERVED_FILE
        if not path.is_file():
            if warn:
                log.warning("%s has no %s: serving with the defaults %s", model_dir, SERVED_FILE, asdict(cls()))
            return cls()
        values = json.loads(path.read_text())
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown field {sorted(unknown)[0]!r}")
        return cls(**values)


def model_codebook(sids: str | Path | SIDCodebook, model_dir: str | Path) -> SIDCodebook:
    """The codebook as the model at ``model_dir`` reads histories (its ``served.json``'s ``item_inputs`` and
    ``history_titles``)."""
    codebook = sids if isinstance(sids, SIDCodebook) else SIDCodebook.load(sids)
    return ServedConfig.load(model_dir, warn=False).history_codebook(codebook)


def load_prior(model_dir: str | Path, warn: bool = True) -> CollaborativePrior | None:
    """The model's collaborative prior; None (the model alone, weight 0) when it has none (with a warning when
    ``warn``)."""
    prior = CollaborativePrior.load(model_dir)
    if prior is None and warn:
        log.warning("%s has no collaborative prior: ranking by the model alone (prior weight 0; "
                    "`think-rec prior` builds one)", model_dir)
    return prior


@dataclass
class RecModel:
    """``model`` (in eval mode) with its ``processor``, the ``codebook`` and its ``trie`` on the processor's vocabulary,
    the ``dataset`` when one was given (``items``: its catalog's ``item_id -> row``), the collaborative ``prior``
    (None: weight 0) and the ``served`` configuration."""

    model: Any
    processor: Any
    codebook: SIDCodebook
    trie: SIDTrie
    dataset: RecDataset | None = None
    prior: CollaborativePrior | None = None
    served: ServedConfig = field(default_factory=ServedConfig)

    @classmethod
    def load(cls, model_dir: str | Path, sids: str | Path | SIDCodebook,
             data: str | Path | RecDataset | None = None, warn: bool = True) -> RecModel:
        """Each artefact once; ``sids`` and ``data`` are folders or already loaded. ``warn``: say when the model
        has no ``served.json`` or prior (False where they are being chosen: ``write_served``)."""
        model, processor = load_model(model_dir)
        model.eval()
        served = ServedConfig.load(model_dir, warn)
        codebook = served.history_codebook(sids if isinstance(sids, SIDCodebook) else SIDCodebook.load(sids))
        dataset = data if data is None or isinstance(data, RecDataset) else RecDataset.load(data)
        return cls(model, processor, codebook, SIDTrie.from_codebook(codebook, processor), dataset,
                   load_prior(model_dir, warn), served)

    @property
    def items(self) -> dict[str, dict[str, Any]]:
        if self.dataset is None:
            raise ValueError("RecModel loaded without data: pass data= to RecModel.load")
        return self.dataset.catalog.by_id
