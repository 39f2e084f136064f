"""Item images: checked where a loader finds them, copied into the prepared folder, and resolved
under a data root whenever they are opened (nothing outside it is ever read or served)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import DataError, FieldError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}
URL_SCHEMES = ("http://", "https://")


def is_url(value: str) -> bool:
    return value.lower().startswith(URL_SCHEMES)


def _joined(base: str, stored: str | Path) -> str:
    """``stored`` (relative to the absolute ``base``, or absolute) normalised, without following links;
    ``ValueError`` when it leaves ``base`` or lacks an image suffix."""
    p = os.path.normpath(os.path.join(base, stored))
    if not p.startswith(base.rstrip(os.sep) + os.sep):
        raise ValueError(f"{str(stored)!r} lies outside {base}")
    if os.path.splitext(p)[1].lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{str(stored)!r} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return p


def _under(root: Path, stored: str | Path) -> Path:
    """``_joined`` with symlinks followed too."""
    base = str(root.resolve())
    p = Path(_joined(base, stored)).resolve()
    if not p.is_relative_to(base):
        raise ValueError(f"{str(stored)!r} lies outside {base} (through a link)")
    return p


def resolve_image(root: str | Path, stored: str | Path) -> Path:
    """The file an item's stored image path names, guaranteed to lie under ``root`` (symlinks
    followed) and to have an image suffix; ``DataError`` otherwise. The file need not exist."""
    try:
        return _under(Path(root), stored)
    except ValueError as e:
        raise DataError(str(root), None, "image", str(e)) from None


def absolute_images(root: Path, images: list[str | None]) -> list[str | None]:
    """A prepared folder's stored image paths made absolute (URLs kept); ``DataError`` for one that
    leaves the folder (links are only followed when an image is opened, by ``resolve_image``)."""
    base = str(root.resolve())
    try:
        return [img if not img or is_url(img) else _joined(base, img) for img in images]
    except ValueError as e:
        raise DataError(str(root / "catalog"), None, "image", str(e)) from None


def source_image(root: Path, value: Any) -> str | None:
    """A loader's ``image`` field: ``None``, an http(s) URL, or an existing image file under the
    source folder ``root`` (returned absolute). ``FieldError`` for anything else."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FieldError("image", f"expected a path or URL, got {type(value).__name__}")
    if is_url(value):
        return value
    if "://" in value:
        raise FieldError("image", f"only http(s) URLs are kept, got {value!r}")
    try:
        p = _under(root, value)
    except ValueError as e:
        raise FieldError("image", str(e)) from None
    try:
        Image.open(p).close()  # reads and identifies the header only
    except FileNotFoundError:
        raise FieldError("image", f"{value!r}: file not found") from None
    except (UnidentifiedImageError, OSError):
        raise FieldError("image", f"{value!r} is not a readable image") from None
    return str(p)


def store_images(images: list[str | None], folder: Path) -> list[str | None]:
    """Local images as paths relative to ``folder``: files already inside it stay, others are
    hard-linked (or copied) to ``folder/images``, keeping their layout below their common folder."""
    folder = folder.resolve()
    local = [None if not p or is_url(p) else Path(p).resolve() for p in images]
    outside = {str(p.parent) for p in local if p is not None and not p.is_relative_to(folder)}
    common = Path(os.path.commonpath(outside)) if outside else folder
    out: list[str | None] = []
    for img, src in zip(images, local):
        if src is None:
            out.append(img or None)
            continue
        if not src.is_relative_to(folder):
            dest = folder / "images" / src.relative_to(common)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copyfile(src, dest)
            src = dest
        out.append(str(src.relative_to(folder)))
    return out
