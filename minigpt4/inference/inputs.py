"""What inference reads: images (one opener, one set of errors, for the demo and caption.py), the
list of images named on the command line, and prompt files."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import torch
from PIL import Image

from minigpt4.common.errors import ConfigError, DatasetError
from minigpt4.constants import IMAGE_MESSAGE

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Larger images are refused before decoding (a 8000x8000 photo is 64 MP); PIL's own bomb check is at ~179 MP.
MAX_IMAGE_PIXELS = 64_000_000


# -- images -----------------------------------------------------------------------------------------
def open_image(path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB image. Anything that stops it (not an image, damaged, too large) is a
    :class:`DatasetError` naming the file (its name only: in the demo the folder is the server's)."""
    name = Path(str(path)).name
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise DatasetError(f"{name}: the image is too large ({width}x{height} pixels; "
                                   f"the limit is {max_pixels / 1e6:.0f} megapixels).")
            return img.convert("RGB")
    except DatasetError:
        raise
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{name}: the image is too large ({err}).") from err
    except Image.UnidentifiedImageError as err:
        raise DatasetError(f"{name}: not a readable image (not an image format that can be read).") from err
    except (OSError, SyntaxError) as err:
        reason = str(err).replace(str(path), name)
        raise DatasetError(f"{name}: not a readable image ({reason}).") from err
    except Exception as err:  # noqa: BLE001  (Pillow decoders raise IndexError, TypeError, ... on damaged files)
        raise DatasetError(f"{name}: not a readable image (the file is damaged: {type(err).__name__}: "
                           f"{str(err).replace(str(path), name)}).") from err


def image_tensor(image, vis_processor) -> torch.Tensor:
    """A path, PIL image or tensor -> a (1, 3, H, W) pixel tensor. A path is read with
    :func:`open_image`; tensors are taken as already processed, as the original."""
    if isinstance(image, (str, Path)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        return vis_processor(image if image.mode == "RGB" else image.convert("RGB")).unsqueeze(0)
    if isinstance(image, torch.Tensor):
        return image.unsqueeze(0) if image.dim() == 3 else image
    raise TypeError(f"An image is a file path, a PIL image or a tensor; got {type(image).__name__}.")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _unique(paths) -> list[Path]:
    """``paths`` with the first name of each real file only (a directory link that loops, or two
    names of one file, would caption an image several times)."""
    seen, unique = set(), []
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(Path(path))
    return unique


def list_images(spec: str) -> list[Path]:
    """The images named by ``spec`` (folder, glob, ``.txt`` list or one file), in a stable order,
    each real file once."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        images = _unique(sorted(p for p in path.iterdir() if p.is_file() and is_image_name(p)))
        if not images:
            raise DatasetError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {spec!r}.")
        return images
    if path.is_file() and path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"cannot read the image list {spec!r} as UTF-8 text ({err}).") from err
        listed = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                item = Path(os.path.expanduser(line))
                listed.append(item if item.is_absolute() else path.parent / item)
        if not listed:
            raise DatasetError(f"the image list {spec!r} is empty.")
        return _unique(listed)  # a listed file that is missing gets its error line
    if path.is_file():
        return [path]
    if glob.has_magic(spec):
        matches = glob.glob(os.path.expanduser(spec), recursive=True)
        images = _unique(sorted(Path(p) for p in matches if os.path.isfile(p)))
        if not images:
            raise DatasetError(f"the pattern {spec!r} matches no files.")
        return images
    raise DatasetError(f"--images {spec!r} is not a folder, a file or a glob pattern that matches anything.")


# -- prompts ----------------------------------------------------------------------------------------
def strip_image_message(prompt: str) -> str:
    """A prompt line without its leading image message (the training prompt file starts each line with it)."""
    prompt = prompt.strip()
    if prompt.startswith(IMAGE_MESSAGE):
        prompt = prompt[len(IMAGE_MESSAGE):].strip()
    return prompt


def read_prompt_file(path) -> list[str]:
    """The prompts of a prompt file, one a line, image message dropped, blank lines skipped
    (``prompts/alignment.txt`` works). A file that cannot be read is a :class:`ConfigError`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the prompt file {str(path)!r} ({err}).") from err
    return [p for p in (strip_image_message(line) for line in lines) if p]
