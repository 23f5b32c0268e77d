"""The output folder: file names, safe image ids, atomic writes, ``stats.json`` and ``runs.jsonl``, the
one-run-at-a-time lock and the clean-up of what a killed run left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

IMAGE_INFO_CSV = "oxford_hic_image_info.csv"
DATA_CSV = "oxford_hic_data.csv"
TOOL_VERSION = 1

# Image ids become file names and webdataset keys: an allow-list, no "..", bounded length. The package
# reader (minigpt4/datasets/hic_format.py) refuses ids by the same rule.
_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


class InputError(Exception):
    """Bad input (missing file, missing columns, bad option): one ``error:`` line, exit code 2."""


def is_safe_image_id(image_id: str) -> bool:
    return bool(_SAFE_ID.fullmatch(image_id)) and ".." not in image_id and not image_id.startswith(".")


def say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def unlink_quiet(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def json_number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise


class AtomicTextWriter:
    """Write a text file under a temporary name in the same folder; rename on success only."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def __enter__(self):
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        self.fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            unlink_quiet(self.tmp)
        return False


def update_stats(out_dir: Path, section: str, payload: dict) -> None:
    """stats.json holds one section per step; a step rewrites only its own section."""
    path = out_dir / "stats.json"
    stats = {}
    if path.exists():
        try:
            stats = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stats = {}
    stats["tool_version"] = TOOL_VERSION
    stats[section] = payload
    atomic_write_bytes(path, (json.dumps(stats, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def log_run(out_dir: Path, record: dict) -> None:
    with open(out_dir / "runs.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``--out-dir`` and make sure files can be written in it, or say why not (an InputError)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file, not a folder: pass a folder (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir, prefix=".write-check-"):
            pass
    except OSError as err:
        raise InputError(f"cannot write in --out-dir {out_dir}: {err.strerror or err}; pass a folder you can "
                         "write to") from None


def clean_stale(out_dir: Path) -> list[str]:
    """Remove what a killed run left (``.select-*/`` partitions, ``.*.tmp`` files, ``.tmp/``); call it
    holding the lock, so that nothing found belongs to a live run. Returns the names removed."""
    removed = []
    for folder in (out_dir, out_dir / "shards"):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and (entry.name.startswith(".select-") or entry.name == ".tmp"):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                unlink_quiet(entry)
            else:
                continue
            removed.append(entry.relative_to(out_dir).as_posix())
    return removed


class Exclusive:
    """Refuse to run two instances on one output folder (they would race on failures.csv and .tmp/)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / ".lock"
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise InputError(f"another prepare_hic.py is already working in {self.path.parent}; "
                             "wait for it to finish (or stop it) and rerun") from None
        return self

    def __exit__(self, *exc):
        self.fh.close()  # closing releases the lock
        return False
