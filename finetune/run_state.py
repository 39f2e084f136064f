"""What a training run may trust on disk, shared by stage 1 (``align.py``) and stage 2 (``reason.py``).

A run's *fingerprint* (its training config, data, SIDs and base model) is recorded in
``<output>/think_rec_run.json`` before its first step; a rerun resumes only when it is unchanged (else
``RunChanged`` names what changed, unless ``overwrite`` starts over) and only from a complete checkpoint.
A merged model is written to a temporary sibling, given ``think_rec_manifest.json`` last and renamed into
place: a folder without a manifest matching the run and step is never taken as done.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from transformers import TrainingArguments

from think_rec.model.adapters import merge_and_save

MANIFEST = "think_rec_manifest.json"
RUN_RECORD = "think_rec_run.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
           "pytorch_model.bin.index.json")
# fields that steer a run without changing what its steps compute: a rerun may change them and resume
RUN_CONTROL = ("output_dir", "overwrite", "max_steps", "num_train_epochs", "time_budget_minutes", "logging_",
               "save_", "hub_", "push_to_hub", "eval_", "report_to", "run_name", "disable_tqdm", "dataloader_",
               "trackio_", "project", "log_", "ddp_", "local_rank")
HASHED_BYTES = 64 << 20  # larger files (big model weights) are identified by size and mtime


class RunChanged(ValueError):
    """A rerun whose config, data, SIDs or base model differ from the run already on disk."""


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_digest(root: str | Path, patterns: Iterable[str]) -> str:
    """Hash of the files under ``root`` matching ``patterns`` (names and contents)."""
    root, parts = Path(root), []
    for path in sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()}):
        stat = path.stat()
        if stat.st_size > HASHED_BYTES:
            parts.append([path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns])
        else:
            parts.append([path.relative_to(root).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest()])
    return digest(parts)


def data_fingerprint(data_dir: str | Path) -> str:
    """A prepared ``RecDataset`` folder's tables and stats."""
    return files_digest(data_dir, ("stats.json", "*/*.arrow"))


def sids_fingerprint(sids_dir: str | Path) -> str:
    """A SID folder's codes and the item embeddings used for pruning."""
    return files_digest(sids_dir, ("sid_meta.json", "item_ids.json", "item_embeddings.npy"))


def model_fingerprint(model: str | Path) -> str:
    """A merged model by its manifest, another local folder by its files, a hub id or preset by its name."""
    path = Path(model)
    if (path / MANIFEST).is_file():
        return digest(json.loads((path / MANIFEST).read_text()))
    if path.is_dir():
        return files_digest(path, ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model"))
    return str(model)


def config_fingerprint(args: TrainingArguments, **replace: Any) -> dict[str, Any]:
    """``args`` as a JSON mapping without the ``RUN_CONTROL`` fields; ``replace`` overrides values."""
    values = {**args.to_dict(), **replace}
    return json.loads(json.dumps({k: v for k, v in values.items() if not k.startswith(RUN_CONTROL)}, default=str))


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of what differs between two fingerprints (``config.<field>`` for config fields)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "config" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"config.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


def checkpoint_step(path: str | Path | None) -> int:
    return int(Path(path).name.split("-")[-1]) if path else 0


def complete_checkpoint(out: str | Path) -> str | None:
    """The latest ``checkpoint-N`` holding both weights and ``trainer_state.json`` (the Trainer writes it last)."""
    found = [p for p in Path(out).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for path in sorted(found, key=checkpoint_step, reverse=True):
        if (path / "trainer_state.json").is_file() and any((path / w).is_file() for w in WEIGHTS):
            return str(path)
    return None


def _prepare(out: Path, fingerprint: dict[str, Any], overwrite: bool, outputs: Sequence[Path]) -> None:
    record = out / RUN_RECORD
    leftovers = [p for p in [*out.glob("checkpoint-*"), *outputs] if p.exists()]
    if overwrite:
        for path in leftovers:
            shutil.rmtree(path)
        record.unlink(missing_ok=True)
    elif record.is_file():
        changed = changes(json.loads(record.read_text()), fingerprint)
        if changed:
            raise RunChanged(f"{out}: changed since its checkpoints were written: {', '.join(changed)}; "
                             "rerun with overwrite=True (--overwrite true) to start over")
    elif leftovers:
        raise RunChanged(f"{out}: holds {leftovers[0].name} but no {RUN_RECORD}, so what it was trained on is "
                         "unknown; rerun with overwrite=True (--overwrite true) to start over")
    if not record.is_file():
        out.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{RUN_RECORD}.{os.getpid()}")
        tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
        tmp.replace(record)


def resume_point(args: TrainingArguments, fingerprint: dict[str, Any], *, overwrite: bool = False,
                 outputs: Sequence[Path] = ()) -> str | None:
    """Check the run in ``args.output_dir`` against ``fingerprint`` (``overwrite``: delete its checkpoints and
    ``outputs`` instead) and return the checkpoint to resume from, if any."""
    out = Path(args.output_dir)
    with args.main_process_first(desc="check the run folder"):
        _prepare(out, fingerprint, overwrite, outputs)
    return complete_checkpoint(out)


def manifest(fingerprint: dict[str, Any], step: int) -> dict[str, Any]:
    return {"step": step, "fingerprint": digest(fingerprint), "config": digest(fingerprint.get("config")),
            **{k: v for k, v in fingerprint.items() if k != "config"}}


def is_complete(folder: str | Path, fingerprint: dict[str, Any], step: int) -> bool:
    """Whether ``folder`` is the merged model of this run at ``step``."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text()) == manifest(fingerprint, step)
    except (OSError, ValueError):
        return False


def save_merged(model, processor, out: str | Path, fingerprint: dict[str, Any], step: int) -> Path:
    """``merge_and_save`` into a temporary sibling of ``out``, manifest last, then renamed to ``out``."""
    out = Path(out)
    for stale in out.parent.glob(f".{out.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp, old = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.old")
    merge_and_save(model, processor, tmp)
    (tmp / MANIFEST).write_text(json.dumps(manifest(fingerprint, step), indent=1))
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def train_and_merge(trainer, processor, last: str | None, merged: str | Path, fingerprint: dict[str, Any],
                    write_logs: Callable[[int], None]) -> Path:
    """Train (resuming from ``last``), then on the main process ``write_logs(step)`` and ``save_merged``, unless
    ``merged`` already is this run's model at the step reached (nothing new was trained since the last merge)."""
    merged = Path(merged)
    trainer.train(resume_from_checkpoint=last)
    step = trainer.state.global_step
    if is_complete(merged, fingerprint, step):
        return merged
    if trainer.is_world_process_zero():
        write_logs(step)
        save_merged(trainer.model, processor, merged, fingerprint, step)
    trainer.accelerator.wait_for_everyone()
    return merged
