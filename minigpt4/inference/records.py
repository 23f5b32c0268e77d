"""The caption record: one JSON line per (image, prompt, caption) in caption.py's output, read back
by caption.py (resume) and evaluate.py through this module only.

A line is ``{"image", "image_id", "prompt", "caption", "caption_index", "num_tokens", "settings",
"model"}``, or ``{"image", "image_id", "error", "model"}`` for an image that could not be read.
New fields are new :class:`CaptionRecord` fields with a ``None`` default (written when set); fields
this version does not know are kept in ``extra`` and written back unchanged.

File names that are not valid UTF-8 (surrogate escapes in Python) are written as ``\\udcXX`` JSON
escapes, so the file stays UTF-8 and the name reads back exactly. Each image's lines go out in one
write, so an interrupted run leaves whole images and at most one torn last line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Iterable

from minigpt4.common.atomic import atomic_write_bytes, ensure_writable_dir
from minigpt4.common.errors import ConfigError, EvaluationError

# The ``model`` fields that say which model wrote a caption (its device does not matter).
MODEL_IDENTITY_KEYS = ("arch", "model_type", "llama_model", "ckpt", "low_resource")
_SURROGATE = re.compile("[\ud800-\udfff]")


class CaptionsFileError(EvaluationError):
    """A captions file (caption.py's JSON Lines) that cannot be read as such."""


@dataclasses.dataclass
class CaptionRecord:
    image: str
    image_id: str
    prompt: str | None = None
    caption: str | None = None
    caption_index: int | None = None
    num_tokens: int | None = None
    error: str | None = None
    settings: dict | None = None
    model: dict | None = None
    # best-of-N reranking (caption.py --rerank-cfg): the humour score, the rank among the image's
    # candidates for its prompt (1 = best), whether it is the chosen one, and the scorer that ranked them
    humour_score: float | None = None
    rank: int | None = None
    chosen: bool | None = None
    scorer: dict | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # fields of a newer writer, kept as they are

    @property
    def is_error(self) -> bool:
        return self.error is not None

    def to_json(self) -> dict:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in row.items() if v is not None}, **self.extra}

    @classmethod
    def from_json(cls, row, where: str) -> "CaptionRecord":
        """A record from a parsed line; a wrong type is a :class:`CaptionsFileError` naming ``where``."""
        if not isinstance(row, dict):
            raise CaptionsFileError(f"{where}: not a caption record (a JSON object).")
        image_id = row.get("image_id")
        if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
            raise CaptionsFileError(f"{where}: no image_id (a string).")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        record = cls(image=_typed(row, "image", str, where) or "", image_id=str(image_id),
                     settings=_typed(row, "settings", dict, where), model=_typed(row, "model", dict, where),
                     extra={k: v for k, v in row.items() if k not in known})
        if "error" in row:
            record.error = str(row["error"])
            return record
        record.caption = _typed(row, "caption", str, where)
        if record.caption is None:
            raise CaptionsFileError(f"{where}: no caption.")
        record.prompt = _typed(row, "prompt", str, where) or ""
        record.num_tokens = _typed(row, "num_tokens", int, where)
        score = row.get("humour_score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise CaptionsFileError(f"{where}: humour_score must be a number; got {score!r:.60}.")
        record.humour_score = None if score is None else float(score)
        record.rank = _typed(row, "rank", int, where)
        record.chosen = _typed(row, "chosen", bool, where)
        record.scorer = _typed(row, "scorer", dict, where)
        index = row.get("caption_index", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise CaptionsFileError(f"{where}: caption_index must be a whole number >= 0; got {index!r}.")
        record.caption_index = index
        return record


def _typed(row: dict, key: str, kind: type, where: str):
    value = row.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is int):
        raise CaptionsFileError(f"{where}: {key} must be a {kind.__name__}; got {value!r:.60}.")
    return value


def encode_line(record: CaptionRecord) -> str:
    text = json.dumps(record.to_json(), ensure_ascii=False, allow_nan=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


# -- reading ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class CaptionLine:
    number: int  # 1-based line number in the file
    record: CaptionRecord
    raw: bytes


@dataclasses.dataclass
class CaptionFile:
    path: Path
    lines: list[CaptionLine]
    torn: int | None = None  # the number of a last line cut short by an interrupted write

    @property
    def records(self) -> list[CaptionRecord]:
        return [line.record for line in self.lines]


def read_caption_file(path) -> CaptionFile:
    """Every record of ``path``. A last line that is not JSON is an interrupted write (``torn``, left
    to the caller: caption.py drops it, evaluate.py warns); any other bad line is an error naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CaptionsFileError(f"Cannot read {path}: {err.strerror or err}.") from err
    parts = [(n, raw) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    result = CaptionFile(path, [])
    for position, (number, raw) in enumerate(parts):
        where = f"{path}, line {number}"
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            if position == len(parts) - 1:
                result.torn = number
                break
            raise CaptionsFileError(f"{where}: not UTF-8 text (byte {err.start}); caption.py writes UTF-8, "
                                    "is this its output?") from err
        except json.JSONDecodeError as err:
            if position == len(parts) - 1:
                result.torn = number
                break
            raise CaptionsFileError(f"{where}: not JSON ({err.msg}). Fix or delete that line.") from err
        result.lines.append(CaptionLine(number, CaptionRecord.from_json(row, where), raw))
    return result


def image_key(image: str) -> str:
    """What resume matches on: the real path (absolute, links resolved) of a record's image."""
    return os.path.realpath(image) if image else ""


# -- resuming ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunSettings:
    """What a run's captions are made with; a rerun into the same file must match it."""

    settings: dict
    model: dict
    prompts: list[str]

    def differences(self, record: CaptionRecord) -> dict[str, tuple]:
        """``name -> (stored, now)`` for each setting in which ``record`` differs from this run
        (settings an older writer did not record are not compared)."""
        diffs = {}
        stored = record.settings or {}
        for key in stored.keys() & self.settings.keys():
            if stored[key] != self.settings[key]:
                diffs[key] = (stored[key], self.settings[key])
        model = record.model or {}
        for key in MODEL_IDENTITY_KEYS:
            if key in model and key in self.model and model[key] != self.model[key]:
                diffs[f"model {key}"] = (model[key], self.model[key])
        if record.prompt not in self.prompts:
            diffs["prompt"] = (record.prompt, self.prompts[0] if len(self.prompts) == 1 else self.prompts)
        return diffs


def describe_differences(diffs: dict[str, tuple]) -> str:
    return "; ".join(f"{name} ({stored!r} there, {now!r} now)" for name, (stored, now) in diffs.items())


def settings_conflicts(existing: CaptionFile, run: RunSettings) -> dict[str, tuple]:
    """``name -> (stored, now)`` for each setting in which some caption line of ``existing`` differs."""
    found: dict[str, tuple] = {}
    for line in existing.lines:
        if not line.record.is_error:
            for name, pair in run.differences(line.record).items():
                found.setdefault(name, pair)
    return found


def check_same_settings(existing: CaptionFile, run: RunSettings, force_append: bool = False) -> None:
    """Refuse an --out whose captions were made with other settings, unless ``force_append``."""
    found = settings_conflicts(existing, run)
    if found and not force_append:
        raise CaptionsFileError(
            f"--out {existing.path} holds captions made with other settings: {describe_differences(found)}. Write "
            "to another --out, or pass --force-append to add this run's captions to the same file.")


@dataclasses.dataclass
class ResumeState:
    """What a captions file holds for a run: the done images' lines by :func:`image_key`
    (``captioned``: all the pairs the run writes; ``errored``: an error line), and the numbers of the
    lines a resume drops (a torn last line, an image cut short, errors to retry)."""

    captioned: dict[str, list[CaptionLine]]
    errored: dict[str, list[CaptionLine]]
    drop: set[int]

    @property
    def done(self) -> set[str]:
        return set(self.captioned) | set(self.errored)


def resume_state(existing: CaptionFile, expected: dict[str, set[tuple[str, int]]], run: RunSettings,
                 retry_errors: bool = False) -> ResumeState:
    """:func:`plan_resume`'s reading of ``existing``, without touching the file."""
    captions: dict[str, list[CaptionLine]] = {}
    errored: dict[str, list[CaptionLine]] = {}
    drop: set[int] = set()
    for line in existing.lines:
        record, key = line.record, image_key(line.record.image)
        if key not in expected:
            continue
        if record.is_error and retry_errors:
            drop.add(line.number)
        elif record.is_error:
            errored.setdefault(key, []).append(line)
        elif not run.differences(record):
            captions.setdefault(key, []).append(line)
    captioned = {}
    for key, lines in captions.items():
        if expected[key] <= {(line.record.prompt, line.record.caption_index) for line in lines}:
            captioned[key] = lines
        elif key not in errored:
            drop.update(line.number for line in lines)  # an image cut short: captioned again, whole
    if existing.torn is not None:
        drop.add(existing.torn)
    return ResumeState(captioned, errored, drop)


def plan_resume(out: Path, expected: dict[str, set[tuple[str, int]]], run: RunSettings, retry_errors: bool = False,
                force_append: bool = False) -> tuple[set[str], int]:
    """Which images of this run ``out`` already holds, and how many of its lines were dropped.

    ``expected`` maps each image's :func:`image_key` to the (prompt, caption_index) pairs this run
    writes for it. An image is done when the lines made with this run's settings hold all its pairs
    (or it has an error line, unless ``retry_errors``); an image with only some of them (an
    interrupted write) is not done, and its partial lines are dropped, as is a torn last line (the
    file is rewritten whole). Lines made with other settings are an error naming the differing
    settings, unless ``force_append`` (they are then kept and do not count)."""
    if not out.exists():
        return set(), 0
    existing = read_caption_file(out)
    check_same_settings(existing, run, force_append)
    state = resume_state(existing, expected, run, retry_errors)
    if state.drop:
        kept = [line.raw + b"\n" for line in existing.lines if line.number not in state.drop]
        atomic_write_bytes(out, b"".join(kept))
    return state.done, len(state.drop)


# -- writing ----------------------------------------------------------------------------------------
def check_output_file(out: Path, flag: str = "--out") -> None:
    """Fail now, not after the model has loaded, if ``out`` cannot be written."""
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a folder; name a file, e.g. {out / 'captions.jsonl'}.")
    try:
        ensure_writable_dir(out.parent)
        if out.exists():
            with out.open("ab"):
                pass
    except OSError as err:
        raise ConfigError(f"{flag} {out} cannot be written ({err.strerror or err}); choose a writable path.") from err


class CaptionWriter:
    """Appends to a captions file; each image's lines go out in one write (no buffer to flush)."""

    def __init__(self, path: Path):
        self._file = open(path, "ab", buffering=0)
        if self._file.tell() > 0:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._write(b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._file.write(view):]

    def write_image(self, records: Iterable[CaptionRecord]) -> None:
        self._write("".join(encode_line(r) for r in records).encode("utf-8"))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "CaptionWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
