"""caption.py over many processes (minigpt4.inference.shards): torchrun with 2 CPU ranks (gloo) and
``--shard i/n`` runs, resumed after torn part files and with another shard count, merge to exactly
the bytes a one-process run writes; the merge rules on hand-written files; bad --shard values; a
second run on the same --out refused, naming the process that holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import cli_error_line
from minigpt4.cli import caption
from minigpt4.inference.records import RunSettings
from minigpt4.inference.shards import ShardLayout, ShardRun, merge_parts

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = ROOT / "tests" / "fixtures" / "minigpt4_tiny_random_eval.yaml"  # random weights
NAMES = ("astronaut", "camera", "chelsea", "coffee", "rocket")  # in the order caption.py lists them
LOCKFILE = ROOT / "minigpt4" / "common" / "lockfile.py"
# Another process holding locks: lockfile.py needs only the standard library, so it loads by path, fast.
HOLDER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("lockfile", sys.argv[1])
lockfile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lockfile)
held = []
for arg in sys.argv[2:]:
    path, mode = arg.rsplit("=", 1)
    held.append(lockfile.LockFile(path))
    assert held[-1].acquire("caption.py writing (the test's holder)", shared=mode == "shared")
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    import skimage.data

    folder = tmp_path_factory.mktemp("images")
    for name in NAMES:
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((64, 64)).save(folder / f"{name}.jpg")
    return folder


@pytest.fixture
def one_thread():
    """In-process runs use one thread, as the torchrun ranks do (OMP_NUM_THREADS=1): same kernels, same sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def argv(image_dir: Path, out: Path, *extra) -> list[str]:
    return ["--cfg-path", str(TINY_CFG), "--images", str(image_dir), "--out", str(out), "--max-new-tokens", "5",
            "--batch-size", "2", "--device", "cpu", "--quiet", *extra]


def tear_last_line(path: Path) -> None:
    """Cut the file in the middle of its last line, as a kill during a write leaves it."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + 20])


def image_ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_bytes().splitlines():
        try:
            ids.append(json.loads(line)["image_id"])
        except ValueError:
            ids.append("<torn>")
    return ids


@pytest.fixture(scope="module")
def reference(image_dir, tiny_dir, tmp_path_factory) -> bytes:
    """The one-process run's file (captions written directly, no part files)."""
    out = tmp_path_factory.mktemp("reference") / "captions.jsonl"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert caption.main(argv(image_dir, out)) == 0
    finally:
        torch.set_num_threads(before)
    assert image_ids(out) == list(NAMES)
    return out.read_bytes()


@pytest.mark.slow
def test_torchrun_two_ranks_resume_torn_parts_of_other_shard_counts(image_dir, reference, tmp_path, one_thread):
    out = tmp_path / "captions.jsonl"
    layout = ShardLayout(out)
    # A job array of 3 shards: shard 1 ran (camera, rocket) and was killed in its last write.
    assert caption.main(argv(image_dir, out, "--shard", "1/3")) == 0
    tear_last_line(layout.part(1, 3))
    # A job array of 2 shards: shard 0 ran (astronaut, chelsea, rocket: rocket's line above is torn), killed too.
    assert caption.main(argv(image_dir, out, "--shard", "0/2")) == 0
    tear_last_line(layout.part(0, 2))
    assert image_ids(layout.part(0, 2)) == ["astronaut", "chelsea", "<torn>"]
    assert not out.exists()  # no merge while shards are missing

    # torchrun, 2 ranks: rank 0 keeps astronaut and chelsea, drops its torn line and redoes rocket; rank 1 takes
    # camera from the 3-shard part and captions coffee; rank 0 merges.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "caption.py"), *argv(image_dir, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0/2: 3 images, 2 already captioned, 1 to caption." in proc.stderr
    assert "rank 1/2: 2 images, 1 already captioned, 1 to caption." in proc.stderr
    assert f"{layout.partial(0, 2)}: dropped 1 line(s)" in proc.stderr
    assert "rank 0/2: merged the parts into" in proc.stderr

    # Every field of every line is what the one-process run wrote, in the same order (the device is "cpu"
    # on every rank, so not even model.device differs).
    assert out.read_bytes() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.jsonl"]  # parts and locks are gone

    assert caption.main(argv(image_dir, out)) == 0  # a rerun has nothing to do
    assert out.read_bytes() == reference


@pytest.mark.slow
def test_a_run_without_shard_finishes_and_merges_the_parts(image_dir, reference, tmp_path, one_thread):
    out = tmp_path / "captions.jsonl"
    assert caption.main(argv(image_dir, out, "--shard", "1/2")) == 0  # camera, coffee; shard 0/2 never runs
    assert not out.exists()
    assert caption.main(argv(image_dir, out)) == 0  # shard 0/1: astronaut, chelsea, rocket, then the merge
    assert out.read_bytes() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.jsonl"]


def line(image: Path, caption_text: str | None = None, error: str | None = None) -> bytes:
    row = {"image": str(image), "image_id": image.stem}
    if error is None:
        row.update(prompt="p", caption=caption_text, caption_index=0, settings={"max_new_tokens": 5})
    else:
        row["error"] = error
    return json.dumps(row).encode() + b"\n"


def test_merge_rules(tmp_path):
    """out keeps its lines (an image outside the list too), less its torn line and an error line a part's
    caption replaces; missing images come from the first part, in name order, holding them whole, captions
    before errors, in input order; images only the parts know follow; then the parts go."""
    img = {name: tmp_path / f"{name}.jpg" for name in "abcdefyz"}
    run = RunSettings({"max_new_tokens": 5}, {}, ["p"])
    layout = ShardLayout(tmp_path / "captions.jsonl")
    layout.parts_dir.mkdir()
    out_lines = [line(img["z"], "z kept"), line(img["b"], error="unreadable then"), line(img["c"], "c kept")]
    layout.out.write_bytes(b"".join(out_lines) + b'{"image": "torn')
    layout.part(0, 2).write_bytes(line(img["a"], "a new") + line(img["e"], "e"))
    layout.part(1, 2).write_bytes(line(img["b"], "b from a part") + line(img["d"], error="d error"))
    layout.partial(0, 3).write_bytes(line(img["a"], "a stale") + line(img["d"], "d caption") + line(img["y"], "y")
                                     + b'{"image": "half')
    files_before = {p: p.read_bytes() for p in [layout.out, *layout.parts_dir.iterdir()]}

    expected = {os.path.realpath(img[name]): {("p", 0)} for name in "abcdef"}
    assert merge_parts(layout, expected, run) == (0, [os.path.realpath(img["f"])])  # f is nowhere
    assert {p: p.read_bytes() for p in files_before} == files_before  # nothing written

    del expected[os.path.realpath(img["f"])]
    assert merge_parts(layout, expected, run) == (5, [])
    assert layout.out.read_bytes() == b"".join([
        out_lines[0], out_lines[2], line(img["a"], "a new"), line(img["b"], "b from a part"),
        line(img["d"], "d caption"), line(img["e"], "e"), line(img["y"], "y")])
    assert not layout.parts_dir.exists()


def test_shard_values_are_checked_before_the_model_loads(image_dir, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(caption, "build_for_inference", no_model)
    monkeypatch.setattr(caption, "load_config", no_model)
    out = tmp_path / "c.jsonl"
    message = cli_error_line(caption.cli, argv(image_dir, out, "--shard", "3/2"), capsys)
    assert "no shard 3 of 2" in message and "0/2 .. 1/2" in message
    assert "not INDEX/COUNT" in cli_error_line(caption.cli, argv(image_dir, out, "--shard", "1"), capsys)
    assert "at least 1" in cli_error_line(caption.cli, argv(image_dir, out, "--shard", "0/0"), capsys)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "--shard is for runs without torchrun" in cli_error_line(caption.cli, argv(image_dir, out, "--shard", "0/2"), capsys)
    assert list(tmp_path.iterdir()) == []


def test_shares_split_the_list_by_position():
    items = list(range(11))
    for count in (1, 2, 3, 4):
        shares = [ShardRun("x.jsonl", f"{index}/{count}").share(items) for index in range(count)]
        assert shares == [[k for k in items if k % count == index] for index in range(count)]


def hold(*locks: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(LOCKFILE), *locks], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_second_run_on_the_same_out_is_refused(image_dir, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(caption, "load_config", no_model)
    out = tmp_path / "c.jsonl"
    layout = ShardLayout(out)

    # A one-process run is writing c.jsonl.
    holder = hold(f"{layout.lock}=exclusive")
    try:
        for extra in ([], ["--shard", "0/2"]):
            message = cli_error_line(caption.cli, argv(image_dir, out, *extra), capsys)
            assert f"--out {out} is being written by another caption.py run (pid {holder.pid} on " in message
    finally:
        holder.kill()  # killed: the kernel drops its lock
        holder.wait()
    with ShardRun(out) as run:
        assert run.target == out and layout.lock.exists()
    assert not layout.lock.exists()

    # Shard 0 of 2 is at work.
    layout.parts_dir.mkdir()
    holder = hold(f"{layout.lock}=shared", f"{layout.part_lock(0, 2)}=exclusive")
    try:
        message = cli_error_line(caption.cli, argv(image_dir, out, "--shard", "0/2"), capsys)
        assert f"shard 0/2 of --out {out} is being captioned by another run (pid {holder.pid} " in message
        message = cli_error_line(caption.cli, argv(image_dir, out, "--shard", "1/3"), capsys)
        assert f"being captioned in 2 shards by another run (shard 0/2: pid {holder.pid} " in message
        message = cli_error_line(caption.cli, argv(image_dir, out), capsys)
        assert f"being written by another caption.py run (shard 0/2: pid {holder.pid} " in message
        with ShardRun(out, "1/2") as run:  # its sibling shard may run
            assert run.target == layout.partial(1, 2)
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()
