"""Where things are: the package, the project checkout, the cache; and what counts as a URL."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the minigpt4 package folder
PROJECT_ROOT = PACKAGE_ROOT.parent  # the folder that holds the package (the checkout in a source install)


def is_url(value) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def resolve_project_path(value: str) -> Path:
    """Resolve a relative path against the working directory first, then the project root.

    The original opened ``prompt_path`` relative to the working directory only, so scripts had to
    be started from one folder; the fallback lets them start anywhere.
    """
    path = Path(os.path.expanduser(value))
    if path.is_absolute() or path.exists():
        return path
    candidate = PROJECT_ROOT / path
    return candidate if candidate.exists() else path


def cache_root() -> Path:
    """Where downloads and generated weights live: ``$MINIGPT4_CACHE``, else ``env.cache_root`` of
    ``minigpt4/configs/default.yaml`` (``~/.cache/minigpt4``)."""
    configured = os.environ.get("MINIGPT4_CACHE")
    if not configured:
        configured = OmegaConf.load(PACKAGE_ROOT / "configs" / "default.yaml").env.cache_root
    return Path(configured).expanduser()
