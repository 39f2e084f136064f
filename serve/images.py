"""The item-image route's file check: only image files under the catalog's image root are served."""
from __future__ import annotations

from pathlib import Path

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                 ".webp": "image/webp"}


def resolve_image(root: Path, stored: str | None) -> tuple[Path, str] | None:
    """``(file, content type)`` for an item's ``image`` field, or None when it is not a local image file under
    ``root`` (a URL, missing, another suffix, or a path escaping ``root``, symlinks resolved)."""
    if not stored or "://" in stored:
        return None
    root = Path(root).resolve()
    path = (root / stored).resolve()  # an absolute ``stored`` replaces ``root`` and is checked the same way
    kind = CONTENT_TYPES.get(path.suffix.lower())
    if kind is None or not path.is_relative_to(root) or not path.is_file():
        return None
    return path, kind
