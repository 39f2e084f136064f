"""The item-image route's file check: ``think_rec.data.images.resolve_image`` plus the content type."""
from __future__ import annotations

import mimetypes
from pathlib import Path

from think_rec.data.errors import DataError
from think_rec.data.images import resolve_image


def served_image(root: Path, stored: str | None) -> tuple[Path, str] | None:
    """``(file, content type)`` for an item's ``image`` field, or None when it is not an existing local image
    file under ``root`` (a URL, missing, another suffix, or a path escaping ``root``, symlinks resolved)."""
    if not stored or "://" in stored:
        return None
    try:
        path = resolve_image(root, stored)
    except DataError:
        return None
    kind = mimetypes.guess_type(path.name)[0]
    return (path, kind) if kind and kind.startswith("image/") and path.is_file() else None
