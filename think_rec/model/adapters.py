"""peft adapters: LoRA on the language model + trainable SID-token rows; warm-up of the new rows only."""
from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.other import TrainableTokensWrapper

# Attention + MLP projections of the language model only (the vision tower ``visual`` reuses the MLP names in
# Qwen2.5-VL): ``model.language_model.layers...`` of a VLM, ``model.layers...`` of a text-only base.
LM_TARGETS = r"(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
TOKEN_LAYERS = ("embed_tokens", "lm_head")  # peft ties lm_head to embed_tokens itself when weights are tied

# TRL's fused LM-head loss reads `lm_head.bias`; peft's wrapper does not forward it. The one fix, here:
if not hasattr(TrainableTokensWrapper, "bias"):
    TrainableTokensWrapper.bias = property(lambda self: getattr(self.token_adapter.base_layer, "bias", None))


def _token_layers(new_token_ids: list[int]) -> dict[str, list[int]]:
    ids = sorted(int(i) for i in new_token_ids)
    if not ids:
        raise ValueError("new_token_ids is empty")
    return {name: ids for name in TOKEN_LAYERS}


def apply_lora(model, new_token_ids: list[int], *, r: int = 16, alpha: int = 32, dropout: float = 0.05,
               target_modules: str | list[str] = LM_TARGETS, train_new_tokens: bool = True) -> PeftModel:
    """LoRA on the LM's attention + MLP; with ``train_new_tokens`` the new rows of embed_tokens and
    lm_head train too (peft ``trainable_token_indices``), every other base weight stays frozen."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM",
                        trainable_token_indices=_token_layers(new_token_ids) if train_new_tokens else None)
    return get_peft_model(model, config)


def make_trainable(model, new_token_ids: list[int], *, r: int, alpha: int):
    """``apply_lora`` when ``r > 0``; with ``r == 0`` every weight trains (a model trained from scratch)."""
    if r > 0:
        return apply_lora(model, new_token_ids, r=r, alpha=alpha)
    return model.requires_grad_(True)


def warmup_only(model, new_token_ids: list[int]) -> PeftModel:
    """Only the new token rows (embed_tokens and lm_head) train; everything else is frozen.

    TRL's SFTTrainer refuses peft's ``TrainableTokensConfig`` (a tuner layer on ``lm_head``), so the rows
    train through LoRA's ``trainable_token_indices`` with the (zero-initialised) LoRA weights frozen.
    """
    model = apply_lora(model, new_token_ids, r=1, alpha=1, dropout=0.0)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(False)
    return model


def merge_and_save(model, processor, out_dir: str | Path) -> Path:
    """Merge LoRA/token rows into the base (in place; a plain model is saved as it is) and save a plain
    checkpoint + processor."""
    out = Path(out_dir)
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    merged.save_pretrained(out)
    processor.save_pretrained(out)
    return out
