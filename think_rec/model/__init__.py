"""Model layer: Qwen-VL presets, the offline tiny model, SID tokens, peft adapters, loading."""
from think_rec.model.adapters import apply_lora, make_trainable, merge_and_save, warmup_only
from think_rec.model.artefacts import RecModel
from think_rec.model.itemic_tokens import add_sid_tokens, sid_token_ids
from think_rec.model.loading import TINY_DIR, load_model, load_processor
from think_rec.model.presets import DEFAULT_MODEL, PRESETS
from think_rec.model.tiny import build_tiny

__all__ = ["DEFAULT_MODEL", "PRESETS", "RecModel", "TINY_DIR", "add_sid_tokens", "apply_lora", "build_tiny",
           "load_model", "load_processor", "make_trainable", "merge_and_save", "sid_token_ids", "warmup_only"]
