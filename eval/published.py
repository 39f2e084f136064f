"""Published results on the datasets ``think-rec bench rec`` runs: the one place they are written down, shown
beside the project's rows (``"published": true``) with the protocol differences (``protocol_notes``)."""
from __future__ import annotations

from typing import Any

ONEREC_THINK = "OneRec-Think (Liu et al., 2025, arXiv:2510.11639), Amazon Beauty results table"

PUBLISHED: dict[str, dict[str, Any]] = {
    "beauty": {
        "rows": [
            {"system": "published_onerec_think", "recall@5": 0.0563, "recall@10": 0.0791, "ndcg@5": 0.0398,
             "ndcg@10": 0.0471, "source": ONEREC_THINK},
            {"system": "published_tiger", "recall@5": 0.0454, "recall@10": 0.0648, "ndcg@5": 0.0321,
             "ndcg@10": 0.0384,
             "source": f"TIGER (Rajput et al., NeurIPS 2023) as reported in {ONEREC_THINK} (TIGER's own numbers)"},
            {"system": "published_sasrec", "recall@5": 0.0402, "recall@10": 0.0607, "ndcg@5": 0.0254,
             "ndcg@10": 0.0320, "source": f"SASRec (Kang & McAuley, ICDM 2018) as reported in {ONEREC_THINK}"},
        ],
        "protocol_notes": (
            "Same file (OneRec-Think's data/sequential_data_processed.txt: 22,363 users, 12,101 items) and the "
            "papers' leave-one-out split (last item test, second-to-last valid, the rest train); every user is "
            "kept and Recall@K / NDCG@K count the one held-out item. Differences: (1) this project ranks the full "
            "catalog with history items excluded when no user repeats an item in train + valid (exclude_history); "
            "the papers generate their top K by beam search over their SIDs (their history handling is not "
            "checked here). (2) SIDs here come from behaviour only (PPMI co-occurrence of the training sequences, "
            "RQ-KMeans built by this project): the file has no item text; TIGER and OneRec-Think build SIDs from "
            "item text and metadata. (3) think_rec is the tiny preset (a few million parameters, random weights) "
            "trained from scratch for budget_minutes on CPU; OneRec-Think fine-tunes a pretrained LLM with text "
            "alignment and reasoning stages, TIGER trains its encoder-decoder to convergence, both on GPUs. "
            "(4) The project's SASRec rows are its own implementation under the same time budget, not the "
            "published SASRec. (5) History: up to 49 items in the SID stream, the latest 10 in the served "
            "prompt; TIGER keeps up to 20."),
    },
}


def add_published(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` (a ``bench rec`` report) with its dataset's published rows appended (each marked
    ``"published": True``) and ``protocol_notes`` set; unchanged for a dataset without published numbers."""
    known = PUBLISHED.get(payload["dataset"])
    if known is None:
        return payload
    return {**payload, "protocol_notes": known["protocol_notes"],
            "rows": payload["rows"] + [{**r, "published": True} for r in known["rows"]]}
