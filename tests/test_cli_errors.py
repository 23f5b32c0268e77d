"""One error style for every entry point: a user error is one ``error:`` line on stderr and exit
code 2, no traceback; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, TINY_RANDOM_EVAL
from minigpt4.cli import caption, demo, evaluate, train

TINY_TRAIN = ROOT / "train_configs" / "minigpt4_tiny_finetune.yaml"


def _one_error_line(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    assert sum(line.startswith("error: ") for line in err) == 1 and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err) and needle in err[-1], err
    return err[-1]


@pytest.mark.parametrize("cli, argv, needle", [
    # a key without a value (used to become null: a random projection, or 10,000 iterations)
    (train.cli, ["--cfg-path", str(TINY_TRAIN), "--options", "run.iters_per_epoch"], "not key=value"),
    (caption.cli, ["--cfg-path", str(TINY_RANDOM_EVAL), "--images", "examples/image", "--out", "x.jsonl",
                   "--options", "model.ckpt"], "not key=value"),
    (demo.cli, ["--cfg-path", str(TINY_RANDOM_EVAL), "--device", "cpu", "--options", "model.ckpt"], "not key=value"),
    # mixed forms and a doubled '='
    (train.cli, ["--cfg-path", str(TINY_TRAIN), "--options", "a.b", "c.d=1"], "'a.b'"),
    (caption.cli, ["--cfg-path", str(TINY_RANDOM_EVAL), "--images", "examples/image", "--out", "x.jsonl",
                   "--options", "model.max_txt_len==2"], "'model.max_txt_len==2'"),
    # an unknown config key deep in a section, a missing config file, a missing captions file
    (train.cli, ["--cfg-path", str(TINY_TRAIN), "--options", "model.vit_config.widht=3"], "model.vit_config.widht"),
    (caption.cli, ["--cfg-path", "nope.yaml", "--images", "examples/image", "--out", "x.jsonl"], "nope.yaml"),
    (evaluate.cli, ["--captions", "missing.jsonl", "--references", "missing.json", "--out", "r"], "missing"),
], ids=["train-no-value", "caption-no-value", "demo-no-value", "train-mixed", "caption-double-eq",
        "train-deep-key", "caption-no-config", "evaluate-no-file"])
def test_user_errors_are_one_line_and_exit_2(cli, argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as info:
        cli(argv)
    assert info.value.code == 2
    _one_error_line(capsys, needle)
    assert not (ROOT / "x.jsonl").exists()


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception) as info:
        train.cli(["--cfg-path", str(TINY_TRAIN), "--debug", "--options", "run.iters_per_epoch"])
    assert "not key=value" in str(info.value)


def test_prepare_hic_error_style(tmp_path):
    """The HIC tool is a script of its own (it does not import the package): same style."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = subprocess.run([sys.executable, str(ROOT / "dataset" / "prepare_hic.py"), "split", "--out-dir", str(blocker)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "a-file" in lines[-1] and "Traceback" not in run.stderr
