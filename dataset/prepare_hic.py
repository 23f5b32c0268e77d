#!/usr/bin/env python
"""Prepare the Oxford HIC (OxfordTVG-HIC) humorous-captioning dataset for MiniGPT-4.

OxfordTVG-HIC ships metadata only: ``oxford_hic_image_info.csv`` (image_id, image_url) and
``oxford_hic_data.csv`` (image_id, caption, funny_score). This tool turns them into a folder that
the ``cc_sbu_align`` and ``oxford_hic`` dataset builders read as is::

    OUT/image/<image_id>.jpg   RGB JPEGs, written atomically (temporary file + rename)
    OUT/failures.csv           image_id,url,reason for every image that could not be fetched
    OUT/selected.jsonl         per image, every kept caption ranked by funny_score (select step)
    OUT/filter_cap.json        training split, {"annotations": [{image_id, caption, funny_score}]}
    OUT/val.json, test.json    per image, every kept caption with its score (evaluation references)
    OUT/shards/train-*.tar     optional webdataset shards (jpg + json)
    OUT/stats.json             counts for every step (deterministic: no timings, no paths)
    OUT/score_hist.png         histogram of the kept funny scores
    OUT/runs.jsonl             one line per run with timings and rates (the only non-deterministic file)

Steps (run all of them, or one at a time)::

    python dataset/prepare_hic.py [all|download|select|split|export] --data-dir DIR --out-dir OUT

See dataset/README_HIC.md for the full guide.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import hashlib
import http.client
import io
import json
import math
import os
import random
import re
import shutil
import socket
import struct
import sys
import tarfile
import tempfile
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator

IMAGE_INFO_CSV = "oxford_hic_image_info.csv"
DATA_CSV = "oxford_hic_data.csv"
USER_AGENT = (
    "minigpt4-hic-prepare/0.1 (research dataset preparation for Oxford HIC; "
    "see dataset/README_HIC.md in the minigpt4-hic project)"
)
STEPS = ("all", "download", "select", "split", "export")
TOOL_VERSION = 1

# Image ids become file names and webdataset keys: an allow-list, no "..", bounded length.
_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_URL_RE = re.compile(r"(?i)\b(?:https?://|www\.)\S+")
_MENTION_RE = re.compile(r"(?<![\w@])@\w+")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# Transient failures worth retrying.
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
_RETRY_REASONS = {"timeout", "connection_error"}


class InputError(Exception):
    """Bad input (missing file, missing columns, bad option): printed without a traceback."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def is_safe_image_id(image_id: str) -> bool:
    return bool(_SAFE_ID.fullmatch(image_id)) and ".." not in image_id and not image_id.startswith(".")


def checked_image_id(row: dict, bad) -> str | None:
    """The row's stripped ``image_id``, or ``None`` (counted in ``bad``) when it is empty or unsafe."""
    image_id = row["image_id"].strip()
    if not image_id:
        bad["missing_image_id"] += 1
        return None
    if not is_safe_image_id(image_id):
        bad["unsafe_image_id"] += 1
        return None
    return image_id


def parse_score(raw) -> int | float | None:
    """'12' -> 12, '1,234' -> 1234, ' 7 ' -> 7, '3.0' -> 3, '2.5' -> 2.5; empty/garbage/negative -> None."""
    if raw is None:
        return None
    if raw.isascii() and raw.isdigit():  # the common case, fast
        return int(raw)
    text = str(raw).strip().strip('"').strip()
    if not text:
        return None
    if _THOUSANDS.fullmatch(text):
        return int(text.replace(",", ""))
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    if "." not in text:
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() else value


def clean_caption(raw: str) -> str:
    """Unicode NFC, all whitespace (newlines, tabs, NBSP) collapsed to single spaces, stripped."""
    return " ".join(unicodedata.normalize("NFC", raw).split())


def order_key(image_id: str) -> float:
    """Stable pseudo-random position in [0, 1) for an image id (output order, bucket choice)."""
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_of(image_id: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from a hash of (seed, image_id): every caption of an image goes together."""
    digest = hashlib.sha256(f"{seed}\x00{image_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
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
            _unlink_quiet(self.tmp)
        return False


def _unlink_quiet(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _json_number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def quantiles_from_counter(counter: Counter, qs=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)) -> dict:
    """Exact (lower) quantiles of a value -> count histogram; memory is the number of distinct values."""
    total = sum(counter.values())
    if total == 0:
        return {}
    items = sorted(counter.items())
    out = {}
    for q in qs:
        rank = min(total - 1, int(math.floor(q * (total - 1))))
        seen = 0
        for value, count in items:
            seen += count
            if seen > rank:
                out[f"q{int(round(q * 100)):02d}"] = _json_number(value)
                break
    out["mean"] = round(sum(v * c for v, c in items) / total, 4)
    return out


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


def _say(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# CSV reading
# --------------------------------------------------------------------------------------------


def _raise_field_limit() -> None:
    limit = 1 << 24
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # pragma: no cover - 32-bit C long
            limit //= 2


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
        index = [names.index(c) for c in required]
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


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


class RateLimiter:
    """Global requests-per-second cap shared by all worker threads (None: unlimited)."""

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self.lock = threading.Lock()
        self.next_slot = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class _NoUnsafeRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-http(s) URL", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class FetchError(Exception):
    def __init__(self, reason: str, retry: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class Downloader:
    def __init__(self, args, out_dir: Path):
        self.args = args
        self.image_dir = out_dir / "image"
        self.tmp_dir = out_dir / ".tmp"
        self.rate = RateLimiter(args.max_per_second)
        self.opener = urllib.request.build_opener(_NoUnsafeRedirects())
        self.rng = random.Random()
        self.rng_lock = threading.Lock()

    # ---- HTTP ------------------------------------------------------------------------------
    def fetch(self, url: str) -> bytes:
        args = self.args
        self.rate.wait()
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
        deadline = time.monotonic() + args.timeout * 4  # socket ops time out at --timeout; whole body by 4x
        try:
            with self.opener.open(request, timeout=args.timeout) as resp:
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > args.max_bytes:
                    raise FetchError("too_many_bytes")
                chunks, size = [], 0
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > args.max_bytes:
                        raise FetchError("too_many_bytes")
                    if time.monotonic() > deadline:
                        raise FetchError("timeout", retry=True)
                    chunks.append(chunk)
                return b"".join(chunks)
        except FetchError:
            raise
        except urllib.error.HTTPError as exc:
            raise FetchError(f"http_{exc.code}", retry=exc.code in _RETRY_HTTP) from None
        except (socket.timeout, TimeoutError):
            raise FetchError("timeout", retry=True) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise FetchError("timeout", retry=True) from None
            if isinstance(exc.reason, socket.gaierror):
                raise FetchError("dns_error", retry=False) from None
            raise FetchError("connection_error", retry=True) from None
        except http.client.IncompleteRead:
            raise FetchError("connection_error", retry=True) from None
        except (http.client.HTTPException, ConnectionError, OSError):
            raise FetchError("connection_error", retry=True) from None
        except ValueError:
            raise FetchError("bad_url") from None

    # ---- image checks and conversion ---------------------------------------------------------
    def to_jpeg(self, data: bytes) -> bytes:
        from PIL import Image, ImageOps, UnidentifiedImageError

        args = self.args
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
            if width * height > args.max_pixels:
                raise FetchError("too_many_pixels")
            if min(width, height) < args.min_side:
                raise FetchError("too_small")
            if args.max_side and img.format == "JPEG":
                img.draft("RGB", (args.max_side, args.max_side))  # fast DCT downscale for huge JPEGs
            img.load()  # full decode: truncated or corrupt data raises here
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if args.max_side and max(img.size) > args.max_side:
                scale = args.max_side / max(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=args.jpeg_quality)
            return buf.getvalue()
        except FetchError:
            raise
        except Image.DecompressionBombError:
            raise FetchError("too_many_pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error):
            raise FetchError("corrupt_image") from None
        finally:
            img.close()

    # ---- one image -----------------------------------------------------------------------------
    def download_one(self, image_id: str, url: str) -> tuple[str, str]:
        """Return ("ok", "") or ("failed", reason). Never leaves a partial file under image/."""
        args = self.args
        attempt = 0
        while True:
            try:
                data = self.fetch(url)
                jpeg = self.to_jpeg(data)
                break
            except FetchError as exc:
                if not exc.retry or attempt >= args.retries:
                    return "failed", exc.reason
                with self.rng_lock:
                    jitter = self.rng.uniform(0.5, 1.5)
                time.sleep(args.backoff * (2**attempt) * jitter)
                attempt += 1
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop 3M downloads
                return "failed", f"error_{type(exc).__name__}"
        tmp = self.tmp_dir / f"{image_id}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(jpeg)
                if args.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, self.image_dir / f"{image_id}.jpg")
        except OSError as exc:
            _unlink_quiet(tmp)
            return "failed", f"write_error_{exc.errno}"
        return "ok", ""


def _to_rgb(img):
    """Flatten any mode to RGB; transparent pixels become white rather than black."""
    from PIL import Image

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
    """A present file is valid if it is a complete JPEG (SOI ... EOI); --verify-existing decodes it."""
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
            from PIL import Image

            with Image.open(path) as img:
                img.load()
                return img.mode == "RGB"
        return True
    except Exception:  # noqa: BLE001
        return False


def read_failures(path: Path) -> dict[str, tuple[str, str]]:
    """image_id -> (url, reason). Tolerates a torn last line from a killed run."""
    failures: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return failures
    text = path.read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # drop a partially written last line
    for row in csv.reader(io.StringIO(text, newline="")):
        if len(row) != 3 or row == ["image_id", "url", "reason"] or not is_safe_image_id(row[0]):
            continue
        failures[row[0]] = (row[1], row[2])
    return failures


def write_failures(path: Path, failures: dict[str, tuple[str, str]]) -> None:
    with AtomicTextWriter(path) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image_id", "url", "reason"])
        for image_id in sorted(failures):
            url, reason = failures[image_id]
            writer.writerow([image_id, url, reason])


def _progress(args, total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=args.quiet, mininterval=0.5, dynamic_ncols=True,
                file=sys.stderr)


def step_download(args, out_dir: Path) -> dict:
    image_dir = out_dir / "image"
    tmp_dir = out_dir / ".tmp"
    image_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp_dir, ignore_errors=True)  # temporaries of a killed run: never under image/
    tmp_dir.mkdir(parents=True, exist_ok=True)

    failures_path = out_dir / "failures.csv"
    previous = read_failures(failures_path)
    failures = dict(previous)  # rewritten, sorted, at the end of the run
    bad = Counter()
    run = Counter()
    seen: set[str] = set()
    listed = 0
    rows_read = 0

    # Rewrite it clean first (a killed run may have left a torn last line), then use it as an
    # append-only journal so that a killed run keeps its failures; one write() per line.
    write_failures(failures_path, previous)
    journal = open(failures_path, "a", encoding="utf-8", newline="")
    journal_writer = csv.writer(journal, lineterminator="\n")

    downloader = Downloader(args, out_dir)
    started = time.monotonic()
    bar = _progress(args, args.limit, "download")
    pending: dict[cf.Future, tuple[str, str]] = {}
    max_inflight = max(4, args.workers * 4)

    def finish(done) -> None:
        for fut in done:
            image_id, url = pending.pop(fut)
            status, reason = fut.result()
            if status == "ok":
                run["downloaded"] += 1
                failures.pop(image_id, None)
            else:
                run["failed"] += 1
                failures[image_id] = (url, reason)
                journal_writer.writerow([image_id, url, reason])  # one write() per line
                journal.flush()
            bar.update(1)
        bar.set_postfix(done=run["downloaded"], failed=run["failed"],
                        skipped=run["skipped_present"] + run["skipped_failed"], refresh=False)

    interrupted = False
    executor = cf.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="hic-dl")
    try:
        rows = iter_csv(args.image_info_csv, ("image_id", "image_url"), bad, "Image info CSV")
        for row in rows:
            if args.limit is not None and listed >= args.limit:
                break
            rows_read += 1
            image_id = checked_image_id(row, bad)
            url = row["image_url"].strip()
            if image_id is None:
                continue
            if image_id in seen:
                bad["duplicate_image_id"] += 1
                continue
            seen.add(image_id)
            listed += 1
            if not url:
                failures[image_id] = ("", "missing_url")
                run["failed"] += 1
                bar.update(1)
                continue
            if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
                failures[image_id] = (url, "unsupported_url")
                run["failed"] += 1
                bar.update(1)
                continue
            if existing_image_ok(image_dir / f"{image_id}.jpg", full=args.verify_existing):
                run["skipped_present"] += 1
                failures.pop(image_id, None)
                bar.update(1)
                continue
            if image_id in previous and not args.retry_failed:
                run["skipped_failed"] += 1
                bar.update(1)
                continue
            while len(pending) >= max_inflight:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                finish(done)
            pending[executor.submit(downloader.download_one, image_id, url)] = (image_id, url)
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            finish(done)
    except KeyboardInterrupt:
        interrupted = True
        for fut in pending:
            fut.cancel()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
        journal.close()

    # Listed ids that failed earlier but whose image is now present must not stay in failures.csv.
    for image_id in [i for i in failures if (image_dir / f"{i}.jpg").exists()]:
        del failures[image_id]
    write_failures(failures_path, failures)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if interrupted:
        raise KeyboardInterrupt

    rows_read += bad["malformed_row"] + bad["bad_encoding"] + bad["malformed_csv"]
    elapsed = time.monotonic() - started
    present = sum(1 for i in seen if (image_dir / f"{i}.jpg").exists())
    reasons = Counter(reason for i, (_, reason) in failures.items() if i in seen)
    stats = {
        "image_info_rows_read": rows_read,
        "image_info_bad_rows": dict(sorted(bad.items())),
        "images_listed": len(seen),
        "images_ok": present,
        "images_failed": sum(reasons.values()),
        "images_failed_by_reason": dict(sorted(reasons.items())),
        "limit": args.limit,
    }
    run_record = {
        "step": "download", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(elapsed, 3),
        "workers": args.workers, "downloaded": run["downloaded"], "failed": run["failed"],
        "skipped_present": run["skipped_present"], "skipped_failed": run["skipped_failed"],
        "images_per_second": round(run["downloaded"] / elapsed, 3) if elapsed > 0 else None,
    }
    log_run(out_dir, run_record)
    update_stats(out_dir, "download", stats)
    _say(args, f"download: {run['downloaded']} downloaded, {run['failed']} failed, "
               f"{run['skipped_present']} already present, {run['skipped_failed']} skipped (failed before; "
               f"--retry-failed retries them) in {elapsed:.1f}s")
    return run_record


# --------------------------------------------------------------------------------------------
# Select: stream the caption CSV, clean, group per image (hash-partitioned chunks), rank
# --------------------------------------------------------------------------------------------


def available_images(out_dir: Path) -> set[str]:
    image_dir = out_dir / "image"
    if not image_dir.is_dir():
        return set()
    ids = set()
    with os.scandir(image_dir) as it:
        for entry in it:
            name = entry.name
            if name.endswith(".jpg") and not name.startswith("."):
                ids.add(name[:-4])
    return ids


def step_select(args, out_dir: Path) -> dict:
    """Write OUT/selected.jsonl: one line per image, its kept captions ranked by funny_score.

    Pass 1 streams the CSV row by row, cleans and filters each row and appends it to one of
    ``--chunks`` temporary partition files chosen by a hash of image_id. Pass 2 loads one partition at
    a time (all captions of an image are in the same one), dedupes and ranks. Peak memory is about one
    partition, not the whole CSV.
    """
    require_images = not args.skip_image_check
    if require_images and not (out_dir / "image").is_dir():
        raise InputError(
            f"{out_dir / 'image'} does not exist: run the download step first "
            "(or pass --skip-image-check to select captions without images)."
        )
    present = available_images(out_dir) if require_images else None
    n_chunks = args.chunks or max(1, min(256, math.ceil(args.data_csv.stat().st_size / (48 << 20))))
    work = Path(tempfile.mkdtemp(prefix=".select-", dir=out_dir))
    bad = Counter()
    dropped = Counter()
    all_scores = Counter()
    rows_read = 0
    started = time.monotonic()
    try:
        files = [open(work / f"part-{i:04d}.csv", "w", encoding="utf-8", newline="") for i in range(n_chunks)]
        writers = [csv.writer(f, lineterminator="\n") for f in files]
        min_words, max_words = args.min_words, args.max_words
        min_score = args.min_score
        last_id, last_part = None, 0
        for row in iter_csv(args.data_csv, ("image_id", "caption", "funny_score"), bad, "Caption CSV"):
            rows_read += 1
            image_id = checked_image_id(row, bad)
            if image_id is None:
                continue
            score = parse_score(row["funny_score"])
            if score is None:
                bad["missing_score" if not row["funny_score"].strip() else "bad_score"] += 1
                continue
            all_scores[score] += 1
            if present is not None and image_id not in present:
                dropped["no_image"] += 1
                continue
            caption = clean_caption(row["caption"])
            if not caption:
                dropped["empty_caption"] += 1
                continue
            n_words = caption.count(" ") + 1
            if n_words < min_words:
                dropped["too_few_words"] += 1
                continue
            if max_words and n_words > max_words:
                dropped["too_many_words"] += 1
                continue
            if args.drop_urls and _URL_RE.search(caption):
                dropped["has_url"] += 1
                continue
            if args.drop_mentions and _MENTION_RE.search(caption):
                dropped["has_mention"] += 1
                continue
            if score < min_score:
                dropped["below_min_score"] += 1
                continue
            if image_id != last_id:
                last_id, last_part = image_id, int(order_key(image_id) * n_chunks)
            writers[last_part].writerow((image_id, score, caption))
        for f in files:
            f.close()
        rows_bad = sum(bad.values())
        rows_read += bad["malformed_row"] + bad["bad_encoding"] + bad["malformed_csv"]

        images_kept = 0
        captions_kept = 0
        kept_scores = Counter()
        captions_per_image = Counter()
        with AtomicTextWriter(out_dir / "selected.jsonl") as out:
            for i in range(n_chunks):
                part = work / f"part-{i:04d}.csv"
                groups: dict[str, dict[str, list]] = {}
                with open(part, "r", encoding="utf-8", newline="") as fh:
                    for n, (image_id, score_text, caption) in enumerate(csv.reader(fh)):
                        score = parse_score(score_text)
                        caps = groups.get(image_id)
                        if caps is None:
                            groups[image_id] = {caption: [score, n]}
                            continue
                        prev = caps.get(caption)
                        if prev is None:
                            caps[caption] = [score, n]
                        else:
                            dropped["duplicate_caption"] += 1
                            if score > prev[0]:
                                prev[0] = score
                part.unlink()
                for image_id in sorted(groups, key=lambda k: (order_key(k), k)):
                    caps = groups[image_id]
                    ranked = sorted(caps.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
                    captions = [[caption, _json_number(score)] for caption, (score, _) in ranked]
                    out.write(json.dumps({"image_id": image_id, "captions": captions}, ensure_ascii=False) + "\n")
                    images_kept += 1
                    captions_kept += len(captions)
                    captions_per_image[min(len(captions), 10)] += 1
                    for _, score in captions:
                        kept_scores[score] += 1
                del groups
    finally:
        shutil.rmtree(work, ignore_errors=True)

    elapsed = time.monotonic() - started
    stats = {
        "options": {
            "min_score": _json_number(args.min_score), "min_words": args.min_words, "max_words": args.max_words,
            "drop_urls": args.drop_urls, "drop_mentions": args.drop_mentions,
            "require_images": require_images,
        },
        "caption_rows_read": rows_read,
        "caption_bad_rows": dict(sorted(bad.items())),
        "caption_bad_rows_total": rows_bad,
        "captions_dropped": dict(sorted(dropped.items())),
        "images_with_captions": images_kept,
        "captions_kept": captions_kept,
        "captions_per_image_hist": {("10+" if k == 10 else str(k)): v for k, v in sorted(captions_per_image.items())},
        "score_quantiles_all_rows": quantiles_from_counter(all_scores),
        "score_quantiles_kept": quantiles_from_counter(kept_scores),
        "score_counts_kept": {str(k): v for k, v in sorted(kept_scores.items())},
    }
    update_stats(out_dir, "select", stats)
    record = {"step": "select", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(elapsed, 3),
              "rows": rows_read, "rows_per_second": round(rows_read / elapsed, 1) if elapsed > 0 else None,
              "chunks": n_chunks}
    log_run(out_dir, record)
    _say(args, f"select: {rows_read} rows read, {captions_kept} captions kept for {images_kept} images "
               f"in {elapsed:.1f}s")
    return record


# --------------------------------------------------------------------------------------------
# Split and export
# --------------------------------------------------------------------------------------------


def iter_selected(out_dir: Path) -> Iterator[dict]:
    path = out_dir / "selected.jsonl"
    if not path.is_file():
        raise InputError(f"{path} not found: run the select step first (python dataset/prepare_hic.py select ...).")
    with open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def iter_splits(args, out_dir: Path) -> Iterator[tuple[str, str, list]]:
    """(split, image_id, captions) with --top-k applied to train and --eval-top-k to val/test."""
    for rec in iter_selected(out_dir):
        image_id = rec["image_id"]
        split = split_of(image_id, args.seed, args.val_fraction, args.test_fraction)
        caps = rec["captions"]
        k = args.top_k if split == "train" else args.eval_top_k
        if k:
            caps = caps[:k]
        yield split, image_id, caps


def step_split(args, out_dir: Path) -> dict:
    counts = {s: Counter() for s in ("train", "val", "test")}
    with AtomicTextWriter(out_dir / "filter_cap.json") as train, \
            AtomicTextWriter(out_dir / "val.json") as val, \
            AtomicTextWriter(out_dir / "test.json") as test:
        train.write('{"annotations": [')
        val.write('{"split": "val", "images": [')
        test.write('{"split": "test", "images": [')
        handles = {"val": val, "test": test}
        for split, image_id, caps in iter_splits(args, out_dir):
            c = counts[split]
            if split == "train":
                for caption, score in caps:
                    item = {"image_id": image_id, "caption": caption, "funny_score": score}
                    train.write(("\n" if c["captions"] == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
                    c["captions"] += 1
            else:
                item = {"image_id": image_id,
                        "captions": [{"caption": cap, "funny_score": score} for cap, score in caps]}
                handles[split].write(("\n" if c["images"] == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
                c["captions"] += len(caps)
            c["images"] += 1
        train.write("\n]}\n")
        val.write("\n]}\n")
        test.write("\n]}\n")
    stats = {
        "options": {"seed": args.seed, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
                    "top_k": args.top_k, "eval_top_k": args.eval_top_k},
        **{s: {"images": counts[s]["images"], "captions": counts[s]["captions"]} for s in counts},
    }
    update_stats(out_dir, "split", stats)
    _say(args, "split: " + ", ".join(f"{s} {counts[s]['images']} images / {counts[s]['captions']} captions"
                                     for s in counts))
    return stats


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shards(args, out_dir: Path) -> dict:
    """Webdataset tar shards of the training split: one sample per (image, caption) pair."""
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob(".*.tmp"):
        _unlink_quiet(stale)
    shard_idx, in_shard, samples = 0, 0, 0
    tar = None
    tmp_path = None
    written = []

    def close_current():
        nonlocal tar, tmp_path
        if tar is not None:
            tar.close()
            final = shard_dir / f"train-{shard_idx:06d}.tar"
            os.replace(tmp_path, final)
            written.append(final.name)
            tar = None

    try:
        for split, image_id, caps in iter_splits(args, out_dir):
            if split != "train":
                continue
            jpg = (out_dir / "image" / f"{image_id}.jpg").read_bytes()
            for caption, score in caps:
                if tar is not None and in_shard >= args.shard_size:
                    close_current()
                    shard_idx += 1
                    in_shard = 0
                if tar is None:
                    tmp_path = shard_dir / f".train-{shard_idx:06d}.tar.tmp"
                    tar = tarfile.open(tmp_path, "w", format=tarfile.USTAR_FORMAT)
                key = f"{samples:09d}"  # webdataset keys cannot contain dots; the id is in the json
                meta = json.dumps({"image_id": image_id, "caption": caption, "funny_score": score},
                                  ensure_ascii=False, sort_keys=True).encode("utf-8")
                tar.addfile(_tarinfo(f"{key}.jpg", len(jpg)), io.BytesIO(jpg))
                tar.addfile(_tarinfo(f"{key}.json", len(meta)), io.BytesIO(meta))
                in_shard += 1
                samples += 1
        close_current()
    except BaseException:
        if tar is not None:
            tar.close()
            _unlink_quiet(tmp_path)
        raise
    keep = set(written)
    for old in shard_dir.glob("train-*.tar"):
        if old.name not in keep:
            old.unlink()  # left over from an earlier run with other settings
    pattern = f"train-{{000000..{len(written) - 1:06d}}}.tar" if written else None
    return {"shard_size": args.shard_size, "shards": len(written), "samples": samples, "pattern": pattern}


def write_histogram(out_dir: Path, kept_scores: Counter) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if kept_scores:
        values = sorted(kept_scores)
        counts = [kept_scores[v] for v in values]
        top = max(values)
        if top <= 60:
            ax.bar(values, counts, width=0.8, color="#3b6ea8")
        else:
            edges = sorted({0.0, *[float(round(top ** (i / 40), 6)) for i in range(41)]})
            import numpy as np

            ax.hist(np.repeat(np.asarray(values, dtype=float), counts), bins=edges, color="#3b6ea8")
            ax.set_xscale("symlog")
        ax.set_yscale("log")
    ax.set_xlabel("funny_score")
    ax.set_ylabel("captions kept")
    ax.set_title(f"Oxford HIC: funny_score of kept captions (n={sum(kept_scores.values())})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(out_dir / "score_hist.png", buf.getvalue())


def step_export(args, out_dir: Path) -> dict:
    kept = Counter()
    for rec in iter_selected(out_dir):
        for _, score in rec["captions"]:
            kept[score] += 1
    write_histogram(out_dir, kept)
    payload = {"histogram": "score_hist.png"}
    if args.shards:
        payload["shards"] = write_shards(args, out_dir)
        _say(args, f"export: {payload['shards']['samples']} samples in {payload['shards']['shards']} shards "
                   f"under {out_dir / 'shards'}")
    update_stats(out_dir, "export", payload)
    return payload


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_hic.py",
        description="Download, clean, select, split and export the Oxford HIC humorous-captioning dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("step", nargs="?", default="all", choices=STEPS,
                   help="which step to run; 'all' runs download, select, split and export in order")
    io_ = p.add_argument_group("input / output")
    io_.add_argument("--data-dir", type=Path, help=f"folder holding {IMAGE_INFO_CSV} and {DATA_CSV}")
    io_.add_argument("--image-info-csv", type=Path, help=f"path of {IMAGE_INFO_CSV} (default: DATA_DIR/...)")
    io_.add_argument("--data-csv", type=Path, help=f"path of {DATA_CSV} (default: DATA_DIR/...)")
    io_.add_argument("--out-dir", type=Path, required=True, help="output folder (point the builders at it)")
    io_.add_argument("--quiet", action="store_true", help="no progress bar or summaries")

    d = p.add_argument_group("download")
    d.add_argument("--workers", type=_positive_int, default=16, help="download threads")
    d.add_argument("--timeout", type=float, default=10.0, help="seconds per socket operation (whole body: 4x)")
    d.add_argument("--retries", type=_non_negative_int, default=2,
                   help="retries for timeouts, connection errors, HTTP 408/425/429/5xx")
    d.add_argument("--backoff", type=float, default=1.0,
                   help="first retry delay in seconds; doubles each retry, with 0.5-1.5x jitter")
    d.add_argument("--max-per-second", type=float, default=None, help="global cap on requests per second")
    d.add_argument("--limit", type=_non_negative_int, default=None, help="only the first N images (a subset)")
    d.add_argument("--retry-failed", action="store_true", help="retry images listed in failures.csv")
    d.add_argument("--verify-existing", action="store_true",
                   help="fully decode images already present before skipping them (slower)")
    d.add_argument("--min-side", type=_positive_int, default=32, help="reject images with a smaller side")
    d.add_argument("--max-side", type=_non_negative_int, default=0,
                   help="resize so the longer side is at most this (0: keep size)")
    d.add_argument("--max-pixels", type=_positive_int, default=40_000_000,
                   help="reject images with more pixels (decompression-bomb guard)")
    d.add_argument("--max-bytes", type=_positive_int, default=30 << 20, help="reject larger responses")
    d.add_argument("--jpeg-quality", type=int, default=92, help="quality of the saved JPEGs")
    d.add_argument("--fsync", action="store_true", help="fsync each image before renaming (power-loss safety)")

    s = p.add_argument_group("select (caption cleaning and ranking)")
    s.add_argument("--min-score", type=float, default=0, help="drop captions with a lower funny_score")
    s.add_argument("--min-words", type=_non_negative_int, default=1, help="drop captions with fewer words")
    s.add_argument("--max-words", type=_non_negative_int, default=64, help="drop longer captions (0: no bound)")
    s.add_argument("--drop-urls", action="store_true", help="drop captions containing URLs")
    s.add_argument("--drop-mentions", action="store_true", help="drop captions containing @mentions")
    s.add_argument("--chunks", type=_non_negative_int, default=0,
                   help="hash partitions for grouping captions per image (0: about one per 48 MB of CSV)")
    s.add_argument("--skip-image-check", action="store_true",
                   help="keep captions whose image is not downloaded (dry runs, benchmarks)")

    sp = p.add_argument_group("split")
    sp.add_argument("--seed", type=int, default=0, help="seed of the image_id hash that assigns splits")
    sp.add_argument("--val-fraction", type=_fraction, default=0.05)
    sp.add_argument("--test-fraction", type=_fraction, default=0.05)
    sp.add_argument("--top-k", type=_non_negative_int, default=1,
                    help="training captions per image, best funny_score first (0: all)")
    sp.add_argument("--eval-top-k", type=_non_negative_int, default=0,
                    help="reference captions per val/test image (0: every kept caption)")

    e = p.add_argument_group("export")
    e.add_argument("--shards", action="store_true", help="also write webdataset shards of the training split")
    e.add_argument("--shard-size", type=_positive_int, default=10000, help="samples per shard")
    return p


def resolve_args(args) -> None:
    need_info = args.step in ("all", "download")
    need_data = args.step in ("all", "select")
    for needed, attr, name, flag in ((need_info, "image_info_csv", IMAGE_INFO_CSV, "--image-info-csv"),
                                     (need_data, "data_csv", DATA_CSV, "--data-csv")):
        if needed and getattr(args, attr) is None:
            if args.data_dir is None:
                raise InputError(f"the {args.step} step reads {name}: pass --data-dir DIR (the folder holding the "
                                 f"OxfordTVG-HIC CSVs) or {flag} FILE")
            setattr(args, attr, args.data_dir / name)
    if args.val_fraction + args.test_fraction >= 1.0:
        raise InputError("--val-fraction + --test-fraction must be below 1 (something must be left to train on)")
    if args.timeout <= 0:
        raise InputError("--timeout must be positive")
    if args.max_per_second is not None and args.max_per_second <= 0:
        raise InputError("--max-per-second must be positive")
    if args.max_words and args.min_words > args.max_words:
        raise InputError("--min-words is larger than --max-words")
    if not 1 <= args.jpeg_quality <= 95:
        raise InputError("--jpeg-quality must be in 1..95")
    if args.step in ("all", "download") and not args.image_info_csv.is_file():
        raise InputError(f"image info CSV not found: {args.image_info_csv}. See dataset/README_HIC.md for where "
                         f"to get {IMAGE_INFO_CSV}; pass its folder with --data-dir.")
    if args.step in ("all", "select") and not args.data_csv.is_file():
        raise InputError(f"caption CSV not found: {args.data_csv}. See dataset/README_HIC.md for where to get "
                         f"{DATA_CSV}; pass its folder with --data-dir.")


class _exclusive:
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from PIL import Image

    # Pixel counts are checked against --max-pixels; Pillow's own warning would only add noise.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        resolve_args(args)
        out_dir = args.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        steps = ("download", "select", "split", "export") if args.step == "all" else (args.step,)
        with _exclusive(out_dir):
            for step in steps:
                {"download": step_download, "select": step_select, "split": step_split, "export": step_export}[
                    step](args, out_dir)
    except InputError as exc:
        print(f"prepare_hic: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prepare_hic: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
