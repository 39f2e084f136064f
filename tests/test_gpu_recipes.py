"""The one-GPU recipes (finetune/configs/*_gpu.yaml) load through both config paths: every key is a field of its
stage's config. Loading only: no GPU here, nothing trains."""
from __future__ import annotations

from pathlib import Path

import pytest
from trl import TrlParser

from think_rec.finetune.align_config import AlignConfig
from think_rec.finetune.base_config import load_config
from think_rec.finetune.reason_config import ReasonConfig
from think_rec.finetune.rl_config import RLConfig

CONFIGS = Path(__file__).resolve().parents[1] / "finetune" / "configs"


@pytest.mark.parametrize("name,config_cls", [("rec_gpu", AlignConfig), ("reason_gpu", ReasonConfig),
                                             ("rl_gpu", RLConfig)])
def test_gpu_recipe_loads(name, config_cls):
    path = CONFIGS / f"{name}.yaml"
    assert path.read_text().startswith("# NOT RUN ON A GPU")
    config = load_config(config_cls, path)  # unknown keys are an error here
    (parsed,) = TrlParser((config_cls,)).parse_args_and_config(["--config", str(path)])  # as `think-rec train`
    assert parsed.output_dir == config.output_dir and parsed.model == config.model
    if config_cls is AlignConfig:
        assert config.item_head and config.lora_r == 0
        assert config.phase_args("sequence").packing and config.phase_args("multitask").per_device_train_batch_size
    if config_cls is RLConfig:
        assert (config.use_vllm, config.vllm_mode) == (True, "colocate")
        assert config.per_device_train_batch_size % config.num_generations == 0
