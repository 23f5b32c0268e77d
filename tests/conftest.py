"""Shared test set-up: a private weight cache (the tiny model is generated there once per
machine), the golden fixtures, and a built tiny model."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# eval_configs/minigpt4_tiny_eval.yaml with the random tiny weights (the quickstart config memorises the examples)
TINY_RANDOM_EVAL = FIXTURES / "minigpt4_tiny_random_eval.yaml"


def pytest_configure(config):
    # Generated tiny weights live in the pytest cache folder, never in the user's cache; set before
    # any config is resolved so subprocesses (torchrun, demo) inherit it.
    os.environ.setdefault("MINIGPT4_CACHE", str(ROOT / ".pytest_cache" / "minigpt4-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The generated tiny model folder (eva_vit_g.pth, blip2_pretrained.pth, llama/, minigpt4.pth)."""
    from minigpt4.tools.make_tiny import ensure_tiny

    return ensure_tiny("tiny")


def make_config(cfg_path, options=None, check_paths=True):
    import minigpt4  # noqa: F401  (registration)
    from minigpt4.common.config import Config

    return Config(SimpleNamespace(cfg_path=str(cfg_path), options=options), check_paths=check_paths)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """The tiny eval model with random weights (TINY_RANDOM_EVAL) on CPU; do not train it in place."""
    from minigpt4.common.registry import registry

    cfg = make_config(TINY_RANDOM_EVAL)
    model = registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg, device="cpu")
    model.eval()
    return model


def cli_error_line(cli, argv, capsys) -> str:
    """Run a console entry point (``caption.cli``, ``evaluate.cli`` ...) on ``argv``: it must stop with
    exit code 2 and one ``error:`` line, no traceback; returns that line."""
    with pytest.raises(SystemExit) as stop:
        cli(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


@pytest.fixture
def evaluate_error(capsys):
    """:func:`cli_error_line` of evaluate.py's entry point, as a fixture taking ``argv``."""
    from minigpt4.cli import evaluate

    return lambda argv: cli_error_line(evaluate.cli, argv, capsys)


@pytest.fixture
def log_handlers():
    """A CLI's logging.basicConfig binds a handler to the sys.stderr of the moment (under capsys, a stream
    closed after the test): drop such stale handlers first, and the handlers a test added after it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            root.removeHandler(handler)
    before = list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)


def require_chromium() -> str:
    """The Chromium binary a browser test drives (CHROMIUM_PATH, else chromium on PATH). Missing: a
    skip on a developer's machine, a failure under CI (.ci/run installs it, so absence there is a bug)."""
    found = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found and Path(found).is_file():
        return found
    message = "needs Chromium on PATH (apt-get install -y chromium) or CHROMIUM_PATH"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
