"""One downloaded image: checked (decodable, pixel and side limits) and converted to an RGB JPEG; and
the check of an image already on disk."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .fetch import FetchError


def to_jpeg(data: bytes, *, min_side: int, max_side: int, max_pixels: int, quality: int) -> bytes:
    """The image in ``data`` as JPEG bytes, or a :class:`FetchError` saying why it is rejected."""
    if not data:
        raise FetchError("empty_response")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise FetchError("too_many_pixels") from None
    except UnidentifiedImageError:
        raise FetchError("not_image") from None
    except (OSError, SyntaxError, ValueError):
        raise FetchError("corrupt_image") from None
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise FetchError("too_many_pixels")
        if min(width, height) < min_side:
            raise FetchError("too_small")
        if max_side and img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))  # fast DCT downscale for huge JPEGs
        img.load()  # full decode: truncated or corrupt data raises here
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        if max_side and max(img.size) > max_side:
            scale = max_side / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    except FetchError:
        raise
    except Image.DecompressionBombError:
        raise FetchError("too_many_pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error):
        raise FetchError("corrupt_image") from None
    finally:
        img.close()


def _to_rgb(img):
    """Flatten any mode to RGB; transparent pixels become white rather than black."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    return img.convert("RGB")


def existing_image_ok(path: Path, full: bool = False) -> bool:
    """A present file is valid if it is a complete JPEG (SOI ... EOI); ``full`` decodes it too."""
    try:
        size = path.stat().st_size
        if size < 4:
            return False
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(-2, os.SEEK_END)
            tail = fh.read(2)
        if head != b"\xff\xd8" or tail != b"\xff\xd9":
            return False
        if full:
            with Image.open(path) as img:
                img.load()
                return img.mode == "RGB"
        return True
    except Exception:  # noqa: BLE001
        return False
