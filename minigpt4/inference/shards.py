"""Captioning over many processes: ``torchrun --nproc-per-node N caption.py ...`` or ``caption.py --shard i/n``.

The image list (in ``--images`` order) is split by position: shard ``i`` of ``n`` takes images
``i, i + n, i + 2n, ...``. Each shard writes its own part file beside ``--out`` (``captions.jsonl``)::

    captions.jsonl.lock                                  who writes captions.jsonl (see below)
    captions.jsonl.parts/part-00001-of-00004.jsonl.partial  shard 1 of 4 at work, one write per image
    captions.jsonl.parts/part-00001-of-00004.jsonl          shard 1 of 4 finished (renamed when done)
    captions.jsonl.parts/part-00001-of-00004.lock           held by the process captioning shard 1 of 4

When every part of the run is finished, the parts are merged into ``--out`` (written whole, then the
parts are removed): ``--out``'s lines stay as they were, and the images it lacks follow in input
order, so the file is the one a single process would have written. Under torchrun rank 0 merges
after all ranks are done; with ``--shard`` the run that finds all ``n`` parts finished merges.

Resume: an image is done when ``--out`` or any part, of any shard count, holds it whole (so a rerun
with another world size skips it); a torn last line or an image cut short in a shard's own part is
dropped and captioned again. A run without ``--shard`` that finds part files acts as shard ``0/1``:
it captions what no shard finished and merges everything.

Locks (:mod:`minigpt4.common.lockfile`, dropped by the kernel when a process dies): a one-process run
and a merge hold ``captions.jsonl.lock`` exclusively, shards hold it shared, and each shard holds its
part's lock; a second run on the same ``--out`` is refused, naming the process that holds it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence, TypeVar

from minigpt4.common.atomic import atomic_write_bytes
from minigpt4.common.dist_utils import (all_gather_object, barrier, destroy_process_group, init_distributed_mode,
                                        is_dist_avail_and_initialized)
from minigpt4.common.errors import ConfigError, MiniGPT4Error
from minigpt4.common.lockfile import LockFile, lock_holder
from minigpt4.inference.records import (CaptionFile, CaptionLine, RunSettings, check_same_settings,
                                        describe_differences, image_key, plan_resume, read_caption_file,
                                        resume_state, settings_conflicts)

logger = logging.getLogger("caption")
T = TypeVar("T")
PART_FILE = re.compile(r"part-(\d+)-of-(\d+)\.jsonl(\.partial)?")
PART_LOCK = re.compile(r"part-(\d+)-of-(\d+)\.lock")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` as ``(i, n)``, 0 <= i < n (shards count from 0, as torchrun's ranks)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r} is not INDEX/COUNT; write e.g. --shard 0/4 for the first of 4 shards.")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise ConfigError(f"--shard {text}: the shard count must be at least 1.")
    if index >= count:
        raise ConfigError(f"--shard {text}: there is no shard {index} of {count}; shards count from 0, so the "
                          f"{count} shards are 0/{count} .. {count - 1}/{count}.")
    return index, count


def torchrun_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` under torchrun with more than one process, else None."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))


class ShardLayout:
    """The files beside ``out`` that sharded runs use."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.lock = self.out.with_name(self.out.name + ".lock")
        self.parts_dir = self.out.with_name(self.out.name + ".parts")

    def part(self, index: int, count: int) -> Path:
        return self.parts_dir / f"part-{index:05d}-of-{count:05d}.jsonl"

    def partial(self, index: int, count: int) -> Path:
        return self.parts_dir / f"part-{index:05d}-of-{count:05d}.jsonl.partial"

    def part_lock(self, index: int, count: int) -> Path:
        return self.parts_dir / f"part-{index:05d}-of-{count:05d}.lock"

    def _matching(self, pattern: re.Pattern) -> list[tuple[Path, int, int]]:
        if not self.parts_dir.is_dir():
            return []
        found = [(path, pattern.fullmatch(path.name)) for path in sorted(self.parts_dir.iterdir())]
        return [(path, int(m[1]), int(m[2])) for path, m in found if m]

    def part_files(self) -> list[tuple[Path, int, int]]:
        """``(path, index, count)`` of every part file, finished or not, in name order."""
        return self._matching(PART_FILE)

    def part_locks(self) -> list[tuple[Path, int, int]]:
        return self._matching(PART_LOCK)

    def remove_parts(self) -> None:
        for path, _, _ in self.part_files():
            path.unlink(missing_ok=True)
        for path, _, _ in self.part_locks():
            lock_holder(path)  # removes a lock file nobody holds
        try:
            self.parts_dir.rmdir()
        except OSError:
            pass  # something else lives there; leave it


def read_part(path: Path, run: RunSettings) -> CaptionFile:
    part = read_caption_file(path)
    found = settings_conflicts(part, run)
    if found:
        raise ConfigError(f"{path} (a part of an unfinished sharded run) holds captions made with other settings: "
                          f"{describe_differences(found)}. Finish that run with its settings, or delete "
                          f"{path.parent} to drop its captions.")
    return part


def merge_parts(layout: ShardLayout, expected: dict[str, set], run: RunSettings, retry_errors: bool = False,
                force_append: bool = False) -> tuple[int, list[str]]:
    """Merge every part file into ``layout.out``: returns (images added, images of ``expected`` that
    are neither in ``out`` nor in a part). Nothing is written while some are missing.

    ``out`` keeps its lines (less those a resume drops); each image it lacks comes from the first
    part, in name order, that holds it whole (captions before an error line), in ``expected``'s
    order; images no longer in ``expected`` follow as the parts hold them. Then the parts go."""
    out = layout.out
    existing = read_caption_file(out) if out.exists() else CaptionFile(out, [])
    check_same_settings(existing, run, force_append)
    out_state = resume_state(existing, expected, run, retry_errors)
    parts = [read_part(path, run) for path, _, _ in layout.part_files()]
    states = [resume_state(part, expected, run) for part in parts]
    chosen: list[list[CaptionLine]] = []
    replaced: set[int] = set()
    missing: list[str] = []
    for key in expected:
        if key in out_state.captioned:
            continue
        lines = next((state.captioned[key] for state in states if key in state.captioned), None)
        if lines is None and key in out_state.errored:
            continue
        lines = lines or next((state.errored[key] for state in states if key in state.errored), None)
        if lines is None:
            missing.append(key)
            continue
        replaced.update(line.number for line in out_state.errored.get(key, []))  # a caption beats the error
        chosen.append(lines)
    if missing:
        return 0, missing
    in_out = {image_key(line.record.image) for line in existing.lines}
    others: dict[str, list[CaptionLine]] = {}
    for part in parts:
        here: dict[str, list[CaptionLine]] = {}
        for line in part.lines:
            key = image_key(line.record.image)
            if key not in expected and key not in in_out and key not in others:
                here.setdefault(key, []).append(line)
        others.update(here)
    chosen += others.values()
    drop = out_state.drop | replaced
    if chosen or drop:
        kept = [line.raw + b"\n" for line in existing.lines if line.number not in drop]
        atomic_write_bytes(out, b"".join(kept + [line.raw + b"\n" for lines in chosen for line in lines]))
    layout.remove_parts()
    return len(chosen), []


class ShardRun:
    """One process's place in a (possibly) sharded captioning run on ``out``; a context manager
    that holds the locks. Without torchrun, ``--shard`` or part files it is the plain one-process
    run writing ``out`` itself."""

    def __init__(self, out, shard: str | None = None):
        self.layout = ShardLayout(out)
        self.out = self.layout.out
        self.spec = parse_shard(shard)
        (self.index, self.count), self.local_rank = self.spec or (0, 1), 0
        self.sharded, self.torchrun = self.spec is not None, False
        self.target = self.out  # where this process writes its captions
        self._locks: list[LockFile] = []
        self._own_group = False
        self._plan: tuple | None = None

    @property
    def tag(self) -> str:
        """A log prefix naming the shard (empty for a one-process run)."""
        return f"{'rank' if self.torchrun else 'shard'} {self.index}/{self.count}: " if self.sharded else ""

    def __enter__(self) -> "ShardRun":
        world = torchrun_world()
        if world and self.spec:
            raise ConfigError("--shard is for runs without torchrun; under torchrun each rank is a shard already. "
                              "Drop --shard, or run without torchrun.")
        if world:
            (self.index, self.count, self.local_rank), self.sharded, self.torchrun = world, True, True
            if not is_dist_avail_and_initialized():
                init_distributed_mode("cpu")  # gloo: the ranks only exchange a few objects
                self._own_group = True
        elif not self.spec and self.layout.part_files():
            self.sharded = True
            logger.info("%s holds parts of a sharded run: this run finishes them as shard 0/1 and merges them.",
                        self.layout.parts_dir)
        try:
            error = None
            try:
                self._claim()
            except MiniGPT4Error as err:
                error = str(err)
            errors = all_gather_object(error) if self.torchrun else [error]
            failed = [(rank, message) for rank, message in enumerate(errors) if message]
            if failed:
                rank, message = failed[0]
                raise ConfigError(message if rank == self.index or not self.torchrun else f"rank {rank}: {message}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release()
        if self._own_group:
            destroy_process_group()
            self._own_group = False

    def _release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()

    def _take(self, path: Path, what: str, shared: bool = False) -> LockFile | None:
        lock = LockFile(path)
        if not lock.acquire(what, shared=shared):
            return lock
        self._locks.append(lock)
        return None

    def _busy(self, lock: LockFile) -> str:
        shards = [f"shard {i}/{n}: {holder}" for path, i, n in self.layout.part_locks()
                  if (holder := lock_holder(path))]
        holder = "; ".join(shards) if shards else lock.holder()
        return (f"--out {self.out} is being written by another caption.py run ({holder}). Wait for it to finish, "
                "or write to another --out.")

    def _claim(self) -> None:
        what = f"caption.py writing {self.out}"
        if not self.sharded:
            if refused := self._take(self.layout.lock, what):
                raise ConfigError(self._busy(refused))
            return
        if refused := self._take(self.layout.lock, what, shared=True):
            raise ConfigError(self._busy(refused))
        try:
            self.layout.parts_dir.mkdir(exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create {self.layout.parts_dir} for the shards' part files "
                              f"({err.strerror or err}); choose a writable --out.") from err
        i, n = self.index, self.count
        if refused := self._take(self.layout.part_lock(i, n), f"captioning shard {i}/{n} of {self.out}"):
            raise ConfigError(f"shard {i}/{n} of --out {self.out} is being captioned by another run "
                              f"({refused.holder()}); each shard runs once at a time. Wait for it, or check the "
                              "--shard of your job array.")
        for path, j, m in self.layout.part_locks():
            if m != n and (holder := lock_holder(path)):
                raise ConfigError(f"--out {self.out} is being captioned in {m} shards by another run (shard {j}/{m}: "
                                  f"{holder}); a run in {n} shards would caption the same images twice. Wait for "
                                  f"it, or use {m} shards.")
        done, partial = self.layout.part(i, n), self.layout.partial(i, n)
        if done.exists() and partial.exists():
            raise ConfigError(f"both {done} and {partial} exist (copied by hand?); delete the one you do not want.")
        if done.exists():
            os.replace(done, partial)  # at work again until finish()
        self.target = partial

    def share(self, items: Sequence[T]) -> list[T]:
        """This shard's items: positions index, index + count, ..."""
        return list(items[self.index::self.count])

    def plan_resume(self, expected: dict[str, set], run: RunSettings, retry_errors: bool = False,
                    force_append: bool = False) -> tuple[set[str], int]:
        """:func:`~minigpt4.inference.records.plan_resume` for this shard: the images of its share
        that are done (in ``--out``, its own part, or a part of another shard count) and the number
        of lines dropped from its own part. ``expected`` is the whole run's, in input order."""
        self._plan = (expected, run, retry_errors, force_append)
        if not self.sharded:
            return plan_resume(self.out, expected, run, retry_errors, force_append)
        mine = {key: expected[key] for key in self.share(list(expected))}
        done: set[str] = set()
        if self.out.exists():
            existing = read_caption_file(self.out)
            check_same_settings(existing, run, force_append)
            done |= resume_state(existing, mine, run, retry_errors).done
        for path, _, count in self.layout.part_files():
            if count != self.count:  # a run with another world size: read only
                done |= resume_state(read_part(path, run), mine, run, retry_errors).done
        if self.target.exists():
            read_part(self.target, run)
        own, dropped = plan_resume(self.target, mine, run, retry_errors)
        return done | own, dropped

    def finish(self) -> int:
        """Close this shard's part (renamed to its finished name) and merge when all parts are
        finished (rank 0 under torchrun, after all ranks). Returns the exit code."""
        if not self.sharded:
            return 0
        done = self.layout.part(self.index, self.count)
        if self.target.exists():
            with open(self.target, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.target, done)
        else:
            atomic_write_bytes(done, b"")
        self._release()  # before the merge takes the --out lock
        if self.torchrun:
            barrier()
            if self.index != 0:
                return 0
        elif not all(self.layout.part(j, self.count).exists() for j in range(self.count)):
            left = [f"{j}/{self.count}" for j in range(self.count) if not self.layout.part(j, self.count).exists()]
            logger.info("%sdone; shard(s) %s are not: the last shard to finish merges the parts into %s.",
                        self.tag, ", ".join(left), self.out)
            return 0
        return self.merge()

    def merge(self) -> int:
        lock = LockFile(self.layout.lock)
        if not lock.acquire(f"caption.py merging shards into {self.out}"):
            if self.torchrun:
                raise ConfigError(self._busy(lock) + " Run the same command again to merge the parts.")
            logger.info("%sanother run is writing %s (%s); the parts are merged when it ends.", self.tag,
                        self.out, lock.holder())
            return 0
        with lock:
            expected, run, retry_errors, force_append = self._plan
            added, missing = merge_parts(self.layout, expected, run, retry_errors, force_append)
        if missing:
            raise ConfigError(f"cannot merge {self.layout.parts_dir} into {self.out}: {len(missing)} image(s) of "
                              f"--images are in no finished part (e.g. {missing[0]}), so the shards listed other "
                              "images. Run the same command without --shard to caption them and merge.")
        logger.info("%smerged the parts into %s (%d images added).", self.tag, self.out, added)
        return 0
