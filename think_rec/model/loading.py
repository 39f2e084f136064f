"""``load_model``: a preset name, a local checkpoint dir or a hub id -> (model, processor); optional 4/8-bit."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, BitsAndBytesConfig

from think_rec.model.presets import PRESETS, TINY

TINY_DIR = Path(os.environ.get("THINK_REC_HOME", "~/.cache/think_rec")).expanduser() / "tiny"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def looks_local(name: str) -> bool:
    """A path rather than a hub ``org/name``: ./ ../ / ~ at the start, an existing parent folder, or a
    separator other than one ``org/name`` slash."""
    if name.startswith(("./", "../", "/", "~")) or (os.sep != "/" and os.sep in name):
        return True
    parent = Path(name).parent
    return (parent != Path(".") and parent.is_dir()) or ("/" in name and not HUB_ID.fullmatch(name))


def resolve(path_or_preset: str | Path, allow_hub: bool | None = None) -> str:
    """Preset name -> hub id or built dir; an existing dir; else a hub id. A missing folder that looks local
    is an error unless hub downloads are allowed (``allow_hub``, default env ``THINK_REC_ALLOW_HUB=1``)."""
    name = str(path_or_preset)
    if name == TINY:
        if not (TINY_DIR / "config.json").exists():
            raise FileNotFoundError(f"preset 'tiny' is not built in {TINY_DIR}: call "
                                    "think_rec.model.build_tiny(TINY_DIR, corpus) first (or set THINK_REC_HOME)")
        return str(TINY_DIR)
    if name in PRESETS:
        return PRESETS[name]
    if Path(name).exists() and not (Path(name) / "config.json").exists():
        raise FileNotFoundError(f"{name}: no config.json, not a model checkpoint")
    if allow_hub is None:
        allow_hub = os.environ.get("THINK_REC_ALLOW_HUB") == "1"
    if not Path(name).exists() and looks_local(name) and not allow_hub:
        raise FileNotFoundError(f"{name}: no such model folder (to download it as a hub id instead, pass "
                                "allow_hub=True or set THINK_REC_ALLOW_HUB=1)")
    return name


def load_processor(path: str | Path):
    """The multimodal processor, or the tokenizer for a text-only checkpoint."""
    try:
        return AutoProcessor.from_pretrained(str(path))
    except (ValueError, OSError, TypeError):
        return AutoTokenizer.from_pretrained(str(path))


def quantization_config(quantization: str | None, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization is None:
        return None
    skip = ["visual", "lm_head"]  # keep the vision tower and output head in full precision
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    raise ValueError(f"quantization must be '4bit', '8bit' or None, not {quantization!r}")


def load_model(path_or_preset: str | Path, *, quantization: str | None = None, dtype: torch.dtype = torch.float32,
               device_map: str | None = None, gradient_checkpointing: bool = False, allow_hub: bool | None = None):
    """``(model, processor)`` via ``AutoModelForImageTextToText``; with ``quantization`` the weights load through
    bitsandbytes (``device_map`` defaults to "cpu") and are prepared for QLoRA (peft
    ``prepare_model_for_kbit_training``); ``allow_hub`` as in ``resolve``."""
    qconfig = quantization_config(quantization, dtype)
    path = resolve(path_or_preset, allow_hub)
    if qconfig is not None and device_map is None:
        device_map = "cpu" if not torch.cuda.is_available() else "auto"
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, quantization_config=qconfig,
                                                        device_map=device_map)
    if qconfig is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model, load_processor(path)
