"""The download step: every listed image fetched once (parallel, resumable), checked, saved as
``image/<image_id>.jpg`` (atomically), every failure in ``failures.csv`` with its reason."""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import os
import random
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .fetch import FetchError, Fetcher, is_public_address, url_problem
from .files import AtomicTextWriter, is_safe_image_id, log_run, say, unlink_quiet, update_stats
from .images import existing_image_ok, to_jpeg
from .rows import checked_image_id, iter_csv


@dataclass(frozen=True)
class DownloadOptions:
    image_info_csv: Path
    workers: int = 16
    timeout: float = 10.0  # seconds per socket operation; the whole response within 4x
    retries: int = 2
    backoff: float = 1.0
    max_per_second: float | None = None
    limit: int | None = None
    retry_failed: bool = False
    verify_existing: bool = False
    min_side: int = 32
    max_side: int = 0
    max_pixels: int = 40_000_000
    max_bytes: int = 30 << 20
    jpeg_quality: int = 92
    fsync: bool = False
    allow_private_redirects: bool = False
    quiet: bool = False


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


class Downloader:
    def __init__(self, opts: DownloadOptions, out_dir: Path, is_public=is_public_address):
        self.opts = opts
        self.image_dir = out_dir / "image"
        self.tmp_dir = out_dir / ".tmp"
        self.fetcher = Fetcher(opts.timeout, opts.max_bytes, opts.max_per_second, opts.allow_private_redirects,
                               is_public)
        self.rng = random.Random()
        self.rng_lock = threading.Lock()

    def abort(self) -> None:
        self.fetcher.abort()

    def download_one(self, image_id: str, url: str) -> tuple[str, str]:
        """Return ("ok", "") or ("failed", reason). Never leaves a partial file under image/."""
        opts = self.opts
        attempt = 0
        while True:
            try:
                data = self.fetcher.fetch(url)
                jpeg = to_jpeg(data, min_side=opts.min_side, max_side=opts.max_side, max_pixels=opts.max_pixels,
                               quality=opts.jpeg_quality)
                break
            except FetchError as exc:
                if not exc.retry or attempt >= opts.retries or self.fetcher.stop.is_set():
                    return "failed", exc.reason
                with self.rng_lock:
                    jitter = self.rng.uniform(0.5, 1.5)
                if self.fetcher.stop.wait(opts.backoff * (2**attempt) * jitter):
                    return "failed", "interrupted"
                attempt += 1
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop 3M downloads
                return "failed", f"error_{type(exc).__name__}"
        tmp = self.tmp_dir / f"{image_id}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(jpeg)
                if opts.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, self.image_dir / f"{image_id}.jpg")
        except OSError as exc:
            unlink_quiet(tmp)
            return "failed", f"write_error_{exc.errno}"
        return "ok", ""


def _progress(quiet: bool, total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=quiet, mininterval=0.5, dynamic_ncols=True,
                file=sys.stderr)


class _Run:
    """The bookkeeping of one download run: failures (journaled as they happen), counts, progress."""

    def __init__(self, opts: DownloadOptions, out_dir: Path):
        self.path = out_dir / "failures.csv"
        self.previous = read_failures(self.path)
        self.failures = dict(self.previous)  # rewritten, sorted, at the end of the run
        self.bad, self.counts = Counter(), Counter()
        self.seen: set[str] = set()
        self.rows_read = 0
        # Rewrite it clean first (a killed run may have left a torn last line), then use it as an
        # append-only journal so that a killed run keeps its failures; one write() per line.
        write_failures(self.path, self.previous)
        self.journal = open(self.path, "a", encoding="utf-8", newline="")
        self.journal_writer = csv.writer(self.journal, lineterminator="\n")
        self.bar = _progress(opts.quiet, opts.limit, "download")

    def failed(self, image_id: str, url: str, reason: str, journal: bool = False) -> None:
        self.counts["failed"] += 1
        self.failures[image_id] = (url, reason)
        if journal:
            self.journal_writer.writerow([image_id, url, reason])  # one write() per line
            self.journal.flush()

    def finish(self, done, pending: dict) -> None:
        for fut in done:
            image_id, url = pending.pop(fut)
            status, reason = fut.result()
            if status == "ok":
                self.counts["downloaded"] += 1
                self.failures.pop(image_id, None)
            else:
                self.failed(image_id, url, reason, journal=True)
            self.bar.update(1)
        c = self.counts
        self.bar.set_postfix(done=c["downloaded"], failed=c["failed"],
                             skipped=c["skipped_present"] + c["skipped_failed"], refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.journal.close()


def _listed(opts: DownloadOptions, run: _Run):
    """(image_id, url) of every listed image, counting unsafe and duplicate ids."""
    for row in iter_csv(opts.image_info_csv, ("image_id", "image_url"), run.bad, "Image info CSV"):
        if opts.limit is not None and len(run.seen) >= opts.limit:
            break
        run.rows_read += 1
        image_id = checked_image_id(row, run.bad)
        if image_id is None:
            continue
        if image_id in run.seen:
            run.bad["duplicate_image_id"] += 1
            continue
        run.seen.add(image_id)
        yield image_id, row["image_url"].strip()


def _fetch_all(opts: DownloadOptions, out_dir: Path, run: _Run, downloader: Downloader) -> None:
    image_dir = out_dir / "image"
    pending: dict[cf.Future, tuple[str, str]] = {}
    max_inflight = max(4, opts.workers * 4)
    executor = cf.ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="hic-dl")
    interrupted = False
    try:
        for image_id, url in _listed(opts, run):
            problem = "missing_url" if not url else url_problem(url)
            if problem:
                run.failed(image_id, url, problem)
                run.bar.update(1)
                continue
            if existing_image_ok(image_dir / f"{image_id}.jpg", full=opts.verify_existing):
                run.counts["skipped_present"] += 1
                run.failures.pop(image_id, None)
                run.bar.update(1)
                continue
            if image_id in run.previous and not opts.retry_failed:
                run.counts["skipped_failed"] += 1
                run.bar.update(1)
                continue
            while len(pending) >= max_inflight:
                run.finish(cf.wait(pending, return_when=cf.FIRST_COMPLETED)[0], pending)
            pending[executor.submit(downloader.download_one, image_id, url)] = (image_id, url)
        while pending:
            run.finish(cf.wait(pending, return_when=cf.FIRST_COMPLETED)[0], pending)
    except KeyboardInterrupt:
        interrupted = True
        downloader.abort()  # every connection in flight ends now; no thread is waited for
        raise
    finally:
        executor.shutdown(wait=not interrupted, cancel_futures=True)


def step_download(opts: DownloadOptions, out_dir: Path, is_public=is_public_address) -> dict:
    image_dir = out_dir / "image"
    tmp_dir = out_dir / ".tmp"
    image_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp_dir, ignore_errors=True)  # temporaries of a killed run: never under image/
    tmp_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(opts, out_dir)
    started = time.monotonic()
    interrupted = False
    try:
        _fetch_all(opts, out_dir, run, Downloader(opts, out_dir, is_public))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        run.close()
    # Listed ids that failed earlier but whose image is now present must not stay in failures.csv.
    failures = run.failures
    for image_id in [i for i in failures if (image_dir / f"{i}.jpg").exists()]:
        del failures[image_id]
    write_failures(run.path, failures)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if interrupted:
        raise KeyboardInterrupt
    return _summary(opts, out_dir, run, time.monotonic() - started)


def _summary(opts: DownloadOptions, out_dir: Path, run: _Run, elapsed: float) -> dict:
    bad, c = run.bad, run.counts
    rows_read = run.rows_read + bad["malformed_row"] + bad["bad_encoding"] + bad["malformed_csv"]
    present = sum(1 for i in run.seen if (out_dir / "image" / f"{i}.jpg").exists())
    reasons = Counter(reason for i, (_, reason) in run.failures.items() if i in run.seen)
    stats = {
        "image_info_rows_read": rows_read,
        "image_info_bad_rows": dict(sorted(bad.items())),
        "images_listed": len(run.seen),
        "images_ok": present,
        "images_failed": sum(reasons.values()),
        "images_failed_by_reason": dict(sorted(reasons.items())),
        "limit": opts.limit,
    }
    record = {
        "step": "download", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(elapsed, 3),
        "workers": opts.workers, "downloaded": c["downloaded"], "failed": c["failed"],
        "skipped_present": c["skipped_present"], "skipped_failed": c["skipped_failed"],
        "images_per_second": round(c["downloaded"] / elapsed, 3) if elapsed > 0 else None,
    }
    log_run(out_dir, record)
    update_stats(out_dir, "download", stats)
    say(opts.quiet, f"download: {c['downloaded']} downloaded, {c['failed']} failed, "
                    f"{c['skipped_present']} already present, {c['skipped_failed']} skipped (failed before; "
                    f"--retry-failed retries them) in {elapsed:.1f}s")
    return record

