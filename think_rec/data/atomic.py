"""Folders written all at once: built in a hidden sibling, then renamed into place."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

MARKERS = ("stats.json", "catalog", "interactions")  # what makes a folder replaceable data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_target(out: Path, overwrite: bool) -> None:
    """``FileExistsError`` unless ``out`` may be (re)written: absent, or (``overwrite``) an empty
    folder or a prepared data folder (never anything else)."""
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not any((out / m).exists() for m in MARKERS)):
        raise FileExistsError(f"{out} is not a prepared data folder; refusing to replace it")


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty sibling of ``out`` to fill; on success it becomes ``out`` (an old ``out`` is
    only moved aside, then deleted, at that point), on any error or kill ``out`` is left as it was.
    Leftovers of killed writers (``.NAME.partial-PID``, ``.NAME.old-PID``) are removed first."""
    out = Path(out).absolute()
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = stale.name[len(out.name) + 2:].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        check_target(out, overwrite)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
