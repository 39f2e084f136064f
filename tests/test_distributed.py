"""Past one machine: stage 1 under ``accelerate launch`` with two processes (DDP over gloo on CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from think_rec.finetune.run_state import MANIFEST
from think_rec.itemic.codebook import SIDCodebook
from think_rec.serve.launch import free_port

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "accelerate"


@pytest.mark.slow
def test_stage1_trains_on_two_processes_and_merges_once(tmp_path, synthetic_dataset):
    from think_rec.model.tiny import build_tiny

    synthetic_dataset.save(tmp_path / "data")
    ids = synthetic_dataset.catalog.ids
    SIDCodebook({i: (k % 8, (k // 8) % 8, k // 64) for k, i in enumerate(ids)}, [8, 8, 8]).save(tmp_path / "sids")
    build_tiny(tmp_path / "tiny", synthetic_dataset.catalog.texts(), seed=0)
    examples, batch, world = 64, 4, 2
    config = tmp_path / "align.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tmp_path / "tiny"), "data_dir": str(tmp_path / "data"), "sids_dir": str(tmp_path / "sids"),
        "output_dir": str(tmp_path / "align"), "phase": "multitask", "task_mix": {"sequential": 1.0},
        "with_images": False, "max_history": 5, "num_examples": examples, "per_device_train_batch_size": batch,
        "num_train_epochs": 1, "logging_steps": 1, "save_steps": 100, "disable_tqdm": True, "seed": 0}))
    # `--cpu` alone runs one process in accelerate 1.x (several need mpirun); `--multi_gpu` starts them
    # through torchrun and, without CUDA, the Trainer's CPU state joins them over gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(world),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    think_rec = Path(sys.executable).parent / "think-rec"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([*launch, str(think_rec), "train", "align", "--config", str(config),
                          "--ddp_find_unused_parameters", "false"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]

    out = tmp_path / "align"
    assert run.stdout.count(f"aligned model: {out / 'final'}") == world  # both ranks ran to the end
    steps = examples // (batch * world)  # each rank saw half the examples per step
    log = json.loads((out / "multitask" / "log_history.json").read_text())
    assert max(e["step"] for e in log) == steps
    assert [p.name for p in out.glob("multitask/checkpoint-*")] == [f"checkpoint-{steps}"]
    assert [p.parent for p in out.rglob(MANIFEST)] == [out / "final"]
    assert not list(out.glob(".final.*"))
    assert json.loads((out / "final" / MANIFEST).read_text())["step"] == steps


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_gpu_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert not config.use_cpu and config.mixed_precision == "bf16"
    if name == "fsdp":
        assert config.distributed_type == DistributedType.FSDP and config.fsdp_config["fsdp_version"] == 2
    else:
        assert config.distributed_type == DistributedType.DEEPSPEED
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_vllm_parallel_sizes_reach_the_engine_args(tmp_path, synthetic_dataset):
    pytest.importorskip("vllm")
    from think_rec.model.tiny import build_tiny
    from think_rec.serve.engine import EngineConfig
    from think_rec.serve.engine_vllm import engine_args

    build_tiny(tmp_path / "model", synthetic_dataset.catalog.texts(), seed=0)
    args = engine_args(EngineConfig(tmp_path / "model", tmp_path / "sids", tensor_parallel_size=4,
                                    data_parallel_size=2), width=8)
    assert (args.tensor_parallel_size, args.data_parallel_size) == (4, 2)
    single = engine_args(EngineConfig(tmp_path / "model", tmp_path / "sids"), width=8)
    assert (single.tensor_parallel_size, single.data_parallel_size) == (1, 1)
