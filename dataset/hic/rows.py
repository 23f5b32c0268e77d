"""The OxfordTVG-HIC metadata CSVs, row by row: streaming with full CSV quoting, image ids, funny
scores and caption text."""

from __future__ import annotations

import csv
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterator

from .files import IMAGE_INFO_CSV, InputError, is_safe_image_id

_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# A funny_score is a vote count: anything beyond this is a broken row (bad_score), and every sum and
# mean of kept scores stays an exact float (Python ints would overflow float division, not addition).
MAX_SCORE = 10**15
_MAX_SCORE_CHARS = 40


def parse_score(raw) -> int | float | None:
    """'12' -> 12, '1,234' -> 1234, ' 7 ' -> 7, '3.0' -> 3, '2.5' -> 2.5; empty, garbage, negative or
    above MAX_SCORE -> None."""
    if raw is None:
        return None
    if raw.isascii() and raw.isdigit() and len(raw) <= 16:  # the common case, fast
        value = int(raw)
        return value if value <= MAX_SCORE else None
    text = str(raw).strip().strip('"').strip()
    if not text or len(text) > _MAX_SCORE_CHARS:  # 5,000 digits: never int() it
        return None
    if _THOUSANDS.fullmatch(text):
        value = int(text.replace(",", ""))
    elif not _PLAIN_NUMBER.fullmatch(text):
        return None
    elif "." not in text:
        value = int(text)
    else:
        value = float(text)
        if not math.isfinite(value):
            return None
        value = int(value) if value.is_integer() else value
    return value if value <= MAX_SCORE else None


def clean_caption(raw: str) -> str:
    """Unicode NFC, all whitespace (newlines, tabs, NBSP) collapsed to single spaces, stripped."""
    return " ".join(unicodedata.normalize("NFC", raw).split())


def checked_image_id(row: dict, bad: Counter) -> str | None:
    """The row's stripped ``image_id``, or ``None`` (counted in ``bad``) when it is empty or unsafe."""
    image_id = row["image_id"].strip()
    if not image_id:
        bad["missing_image_id"] += 1
        return None
    if not is_safe_image_id(image_id):
        bad["unsafe_image_id"] += 1
        return None
    return image_id


def _raise_field_limit() -> None:
    limit = 1 << 24
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # pragma: no cover - 32-bit C long
            limit //= 2


def _columns(reader, path: Path, required: tuple[str, ...], what: str) -> list[int]:
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{what} {path} is empty; expected a header line: {','.join(required)}") from None
    names = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(
            f"{what} {path} is missing column(s) {', '.join(missing)}; found columns {header!r}. "
            f"The first line must be a header naming at least: {','.join(required)}."
        )
    return [names.index(c) for c in required]


def iter_csv(path: Path, required: tuple[str, ...], bad: Counter, what: str) -> Iterator[dict]:
    """Stream the rows of a metadata CSV as dicts of the required columns.

    UTF-8 with or without BOM; full CSV quoting (commas, quotes, newlines inside fields). Bytes that
    are not UTF-8 are replaced and such rows dropped ("bad_encoding"); rows with missing fields are
    dropped ("malformed_row"); rows the csv module cannot parse are dropped ("malformed_csv").
    """
    if not path.is_file():
        raise InputError(
            f"{what} not found: {path}. Download the OxfordTVG-HIC metadata (see dataset/README_HIC.md) "
            f"and pass the folder that holds {path.name} with --data-dir (or the file with "
            f"--{'image-info' if path.name == IMAGE_INFO_CSV else 'data'}-csv)."
        )
    _raise_field_limit()
    with open(path, "r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        index = _columns(reader, path, required, what)
        width = max(index) + 1
        consecutive_errors = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                bad["malformed_csv"] += 1
                consecutive_errors += 1
                if consecutive_errors > 1000:
                    raise InputError(f"{what} {path}: over 1000 consecutive unparsable CSV lines; is it a CSV file?")
                continue
            consecutive_errors = 0
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) < width:
                bad["malformed_row"] += 1
                continue
            values = [row[i] for i in index]
            if any("\ufffd" in v for v in values):
                bad["bad_encoding"] += 1
                continue
            yield dict(zip(required, values))
