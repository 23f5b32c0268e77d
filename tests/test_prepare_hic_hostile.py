"""dataset/prepare_hic.py against hostile and careless input (issue 9): malformed URLs, drip-feeding
servers, Ctrl-C, redirects into private addresses, absurd scores, leftovers of killed runs, a bad
--out-dir. Local servers on 127.0.0.1 / 127.0.0.2 only."""

from __future__ import annotations

import csv
import fcntl
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hic_server import ImageServer, Route, make_image_bytes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dataset"))
import prepare_hic as ph  # noqa: E402
from hic.download import DownloadOptions, step_download  # noqa: E402
from hic.fetch import url_problem  # noqa: E402

JPEG = make_image_bytes((64, 48))


def write_info(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "image_url"])
        w.writerows(rows)
    return path


def read_failures(out: Path) -> dict:
    with open(out / "failures.csv", encoding="utf-8", newline="") as fh:
        return {r["image_id"]: r["reason"] for r in csv.DictReader(fh)}


def download(info: Path, out: Path, *extra) -> int:
    return ph.main(["download", "--image-info-csv", str(info), "--out-dir", str(out), "--quiet", *extra])


# -- item 2: malformed and invalid URLs ---------------------------------------------------------------
BAD_URLS = {
    "u_bracket": "http://[::1",  # urlsplit raises ValueError
    "u_port": "http://127.0.0.1:99999/img/a.jpg",
    "u_port_text": "http://127.0.0.1:http/img/a.jpg",
    "u_space_host": "http://exa mple.com/a.jpg",
    "u_crlf": "http://127.0.0.1\r\n/a.jpg",
    "u_no_host": "http:///a.jpg",
}


def test_url_problem():
    for url in BAD_URLS.values():
        assert url_problem(url) == "bad_url", url
    assert url_problem("ftp://127.0.0.1/a.jpg") == "unsupported_url"
    assert url_problem("https://example.com:8443/a%20b.jpg?x=1") is None


def test_malformed_urls_are_bad_url_and_never_requested(tmp_path):
    with ImageServer() as srv:
        srv.routes["/img/a.jpg"] = Route(JPEG)
        info = write_info(tmp_path / "info.csv", [*BAD_URLS.items(), ("ok", srv.url("/img/a.jpg"))])
        out = tmp_path / "out"
        assert download(info, out, "--retries", "3", "--backoff", "5") == 0  # no retry: no 5 s backoff
        assert read_failures(out) == {image_id: "bad_url" for image_id in BAD_URLS}
        assert (out / "image" / "ok.jpg").is_file() and dict(srv.requests) == {"/img/a.jpg": 1}
        # a rerun (even retrying failures) does not die on the same rows
        assert download(info, out, "--retry-failed") == 0
        assert read_failures(out) == {image_id: "bad_url" for image_id in BAD_URLS}


# -- item 7: the deadline covers every read, headers included; Ctrl-C does not wait -------------------
@pytest.mark.parametrize("drip_headers", [False, True])
def test_drip_fed_response_times_out_at_the_deadline(tmp_path, drip_headers):
    # One byte every 50 ms: each read arrives well within --timeout 0.3, the whole response would take
    # about 40 s (headers: 15 s). The deadline is 4 x 0.3 s.
    with ImageServer() as srv:
        srv.routes["/drip.jpg"] = Route(JPEG, drip=0.05, drip_headers=drip_headers)
        info = write_info(tmp_path / "info.csv", [("drip", srv.url("/drip.jpg"))])
        started = time.monotonic()
        assert download(info, tmp_path / "out", "--timeout", "0.3", "--retries", "0") == 0
        elapsed = time.monotonic() - started
    assert read_failures(tmp_path / "out") == {"drip": "timeout"}
    assert elapsed < 10, f"the download took {elapsed:.1f}s; its deadline was 1.2s"


def test_ctrl_c_does_not_wait_for_workers(tmp_path):
    with ImageServer() as srv:
        srv.routes["/stuck.jpg"] = Route(JPEG, delay=60)  # no headers for a minute
        info = write_info(tmp_path / "info.csv", [(f"s{i}", srv.url("/stuck.jpg")) for i in range(3)])
        out = tmp_path / "out"
        proc = subprocess.Popen([sys.executable, str(REPO / "dataset" / "prepare_hic.py"), "download",
                                 "--image-info-csv", str(info), "--out-dir", str(out), "--timeout", "30",
                                 "--workers", "3", "--quiet"], stderr=subprocess.PIPE, text=True,
                                cwd=tmp_path)  # the script runs from any working directory
        deadline = time.monotonic() + 30
        while srv.total_requests() < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "the downloads never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=8)  # a waiting run would sit out the 30 s socket timeout
        finally:
            proc.kill()
        err = proc.stderr.read()
        proc.stderr.close()
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert not (out / ".tmp").exists() and list((out / "image").iterdir()) == []


# -- your call: redirects from a public host into private addresses ------------------------------------
def test_redirects_into_private_addresses_are_refused(tmp_path):
    with ImageServer() as origin, ImageServer(host="127.0.0.2") as inner:
        inner.routes["/secret.jpg"] = Route(JPEG)
        origin.routes["/r.jpg"] = Route(b"", status=302, headers={"Location": inner.url("/secret.jpg")})
        info = write_info(tmp_path / "info.csv", [("r", origin.url("/r.jpg"))])
        only_origin_public = lambda address: address == "127.0.0.1"  # noqa: E731 - stands for a public host

        def run(name, **options):
            opts = DownloadOptions(image_info_csv=info, quiet=True, retries=0, **options)
            (tmp_path / name).mkdir()
            step_download(opts, tmp_path / name, is_public=only_origin_public)
            return tmp_path / name

        out = run("refused")
        assert read_failures(out) == {"r": "redirect_refused"} and inner.total_requests() == 0
        out = run("allowed", allow_private_redirects=True)
        assert (out / "image" / "r.jpg").is_file() and inner.requests["/secret.jpg"] == 1

        # With real addresses both servers are loopback: a private origin may redirect (the tests'
        # own downloads and a local mirror keep working).
        inner.reset_counts()
        assert download(info, tmp_path / "local") == 0
        assert (tmp_path / "local" / "image" / "r.jpg").is_file() and inner.requests["/secret.jpg"] == 1


# -- item 14: absurd scores ----------------------------------------------------------------------------
def test_absurd_scores_are_bad_score_and_stats_stay_finite(tmp_path):
    data = tmp_path / "data.csv"
    rows = [("i1", "five thousand digits", "7" * 5000), ("i1", "overflowing float", "1e400"),
            ("i1", "a 401-digit integer", "1" + "0" * 400), ("i1", "just above the cap", str(10**15 + 1)),
            ("i1", "too long with commas", "1" + ",000" * 20), ("i1", "a fine caption", "3"),
            ("i2", "the largest score kept", str(10**15))]
    with open(data, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([("image_id", "caption", "funny_score"), *rows])
    out = tmp_path / "out"
    assert ph.main(["select", "--data-csv", str(data), "--out-dir", str(out), "--skip-image-check", "--quiet"]) == 0
    assert ph.main(["export", "--out-dir", str(out), "--quiet"]) == 0
    stats = json.loads((out / "stats.json").read_text())["select"]
    assert stats["caption_bad_rows"] == {"bad_score": 5}
    assert stats["score_quantiles_kept"]["q100"] == 10**15
    assert stats["score_quantiles_kept"]["mean"] == pytest.approx((3 + 10**15) / 2)
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert sorted((r["image_id"], r["captions"]) for r in selected) == [
        ("i1", [["a fine caption", 3]]), ("i2", [["the largest score kept", 10**15]])]
    assert (out / "score_hist.png").read_bytes()[:4] == b"\x89PNG"


# -- item 15: leftovers of a killed run ----------------------------------------------------------------
def _leftovers(out: Path) -> list[Path]:
    (out / ".select-k1l2").mkdir(parents=True)
    (out / ".select-k1l2" / "part-0000.csv").write_text("img,1,caption\n")
    (out / "shards").mkdir()
    paths = [out / ".select-k1l2", out / ".selected.jsonl.x1y2.tmp", out / ".stats.json.a.tmp",
             out / "shards" / ".train-000000.tar.tmp", out / ".tmp"]
    for path in paths[1:4]:
        path.write_text("partial")
    (out / ".tmp").mkdir()
    return paths


def test_stale_partitions_and_temporaries_are_removed_under_the_lock(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("image_id,caption,funny_score\na,a caption,1\n", encoding="utf-8")
    out = tmp_path / "out"
    stale = _leftovers(out)
    (out / "notes.tmp").write_text("a user's file, not hidden: kept")
    with open(out / ".lock", "a+") as lock:  # another run holds the folder: nothing is touched
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert ph.main(["split", "--out-dir", str(out), "--quiet"]) == 2
        assert all(p.exists() for p in stale)
    assert ph.main(["select", "--data-csv", str(data), "--out-dir", str(out), "--skip-image-check", "--quiet"]) == 0
    assert ph.main(["split", "--out-dir", str(out), "--quiet"]) == 0
    assert [p for p in stale if p.exists()] == [] and (out / "notes.tmp").exists()
    assert not list(out.glob(".select-*"))


# -- item 26: --out-dir that cannot be used; one error line ----------------------------------------------
@pytest.mark.parametrize("case", ["file", "under_file"])
def test_unusable_out_dir_is_one_error_line(tmp_path, capsys, case):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker if case == "file" else blocker / "sub"
    assert ph.main(["split", "--out-dir", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--out-dir" in lines[0]
    assert str(out) in lines[0] and blocker.read_text() == "not a folder"
    with pytest.raises(ph.InputError):  # --debug: the traceback instead of the line
        ph.main(["split", "--out-dir", str(out), "--quiet", "--debug"])
