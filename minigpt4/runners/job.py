"""A training job on disk and its reproducibility: the job folder, seeds, RNG states, checkpoint
files (named, written atomically) and the checks on a checkpoint named to resume from."""

from __future__ import annotations

import datetime
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from minigpt4.common import dist_utils
from minigpt4.common.atomic import atomic_path
from minigpt4.common.errors import CheckpointError
from minigpt4.common.paths import cache_root, is_url
from minigpt4.models.checkpoint import load_weights_file

logger = logging.getLogger(__name__)

RESUME_KEY = "run.resume_ckpt_path"
# what a checkpoint needs to be a resume point (the original's keys; ``config`` and ``scaler`` may be absent)
RESUME_KEYS = ("model", "optimizer", "epoch")


def create_job_dir(output_dir: str) -> tuple[str, Path]:
    """A fresh ``<output_dir>/<job_id>`` (relative to the working directory), made by rank 0 and
    shared with the other ranks. Job ids are timestamps to the second, with a suffix when taken."""
    job_id = None
    if dist_utils.is_main_process():
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        for n in range(10_000):
            candidate = stamp if n == 0 else f"{stamp}_{n}"
            try:
                (Path(output_dir) / candidate).mkdir()  # atomic: fails if another run took it
                job_id = candidate
                break
            except FileExistsError:
                continue
    job_id = dist_utils.broadcast_object(job_id)
    return job_id, Path(output_dir) / job_id


def setup_seeds(seed: int) -> None:
    """``seed + rank`` for Python, NumPy and torch; deterministic cuDNN (as the original)."""
    seed = int(seed) + dist_utils.get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def get_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as plain Python lists (picklable across ranks and
    loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), *(x.item() if hasattr(x, "item") else x for x in np_state[2:])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def checkpoint_path(job_dir: Path, epoch: int | str, iters_done: int | None = None) -> Path:
    """``checkpoint_{epoch}.pth`` (after a whole epoch; ``epoch`` may also be a tag such as
    ``"best"``) or ``checkpoint_{epoch}_iter{n}.pth`` (``iters_done`` batches into the epoch)."""
    suffix = f"_iter{iters_done}" if iters_done is not None else ""
    return Path(job_dir) / f"checkpoint_{epoch}{suffix}.pth"


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed over it once complete."""
    logger.info("Saving checkpoint at epoch %s to %s.", state.get("epoch"), path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def copy_checkpoint(source: Path, target: Path) -> None:
    """A whole copy of a written checkpoint (``checkpoint_best.pth``), atomically."""
    logger.info("Copying checkpoint %s to %s.", source, target)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def prune_checkpoints(job_dir: Path, keep: int | None, last_epoch: int) -> list[Path]:
    """With ``run.keep_checkpoints: N``, remove the ``checkpoint_<epoch>.pth`` of epochs before the last
    N (up to ``last_epoch``) and their mid-epoch ``checkpoint_<epoch>_iter<n>.pth``; ``checkpoint_best.pth``
    stays. Returns what was removed."""
    if keep is None:
        return []
    removed = []
    for path in sorted(Path(job_dir).glob("checkpoint_*.pth")):
        epoch = path.stem[len("checkpoint_"):].split("_iter")[0]
        if epoch.isdigit() and int(epoch) <= last_epoch - keep:
            path.unlink()
            removed.append(path)
    if removed:
        logger.info("run.keep_checkpoints=%d: removed %s.", keep, ", ".join(p.name for p in removed))
    return removed


def _not_a_resume_point(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{RESUME_KEY} {str(path)!r} {why}: it is not a resume point. To start a new run from its weights, "
        f"set model.ckpt={path} instead; to resume, name a checkpoint_<epoch>.pth (or checkpoint_<epoch>_iter<n>.pth) "
        "of a job folder written by train.py."
    )


def read_resume_checkpoint(path_or_url: str) -> tuple[Path, dict]:
    """The local path and content of the checkpoint named by ``run.resume_ckpt_path`` (a file or an
    http(s) URL, downloaded once into the cache); every problem is a :class:`CheckpointError` that
    names the file and says what to do."""
    if is_url(path_or_url):
        name = Path(path_or_url.split("?")[0]).name or "resume.pth"
        path = dist_utils.download_once(path_or_url, cache_root() / "resume" / name)
    else:
        path = Path(str(path_or_url)).expanduser()
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except OSError as err:  # a name too long, a broken mount
        raise CheckpointError(f"{RESUME_KEY} {str(path)!r} cannot be used ({err.strerror or err}): check the path.") from None
    if not exists:
        raise CheckpointError(f"{RESUME_KEY} {str(path)!r} does not exist: name a checkpoint_<epoch>.pth of a "
                              "job folder written by train.py (or leave the key unset to start afresh).")
    if is_dir:
        found = sorted(p.name for p in path.glob("checkpoint_*.pth"))
        hint = f" It holds {', '.join(found[-3:])}." if found else ""
        raise CheckpointError(f"{RESUME_KEY} {str(path)!r} is a folder: name one checkpoint file in it.{hint}")
    if not is_file:
        raise CheckpointError(f"{RESUME_KEY} {str(path)!r} is not a regular file: name a checkpoint_<epoch>.pth.")
    try:
        state = load_weights_file(path, f"resume checkpoint ({RESUME_KEY})")
    except OSError as err:  # unreadable: permissions, a device, a broken mount
        raise CheckpointError(f"{RESUME_KEY} {str(path)!r} cannot be read ({err.strerror or err}): check the "
                              "path and its permissions.") from None
    if "optimizer" not in state:
        raise _not_a_resume_point(path, "holds model weights only (no optimizer state)")
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise _not_a_resume_point(path, f"has no {' or '.join(map(repr, missing))} entry")
    if not isinstance(state["model"], dict) or not isinstance(state["optimizer"], dict):
        raise _not_a_resume_point(path, "has no model or optimizer state dict")
    try:
        int(state["epoch"])
    except (TypeError, ValueError):
        raise _not_a_resume_point(path, f"has epoch {state['epoch']!r}, not a number") from None
    return path, state
