#!/usr/bin/env python
"""Benchmark dataset/prepare_hic.py.

* Download throughput (images/s) against a local server on 127.0.0.1 that adds 50 ms of latency to
  every request, at 1, 8 and 32 workers.
* Selection throughput (rows/s) and peak memory (RSS of the selecting process) on synthetic
  oxford_hic_data.csv files of 1M and 3M rows.

Writes benchmarks/results/bench_hic.json and benchmarks/results/bench_hic.md.

    python benchmarks/bench_hic.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_hic.py --quick    # smaller sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "dataset"))

import prepare_hic as ph  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WORDS = ("cat dog when you finally realise the boss is watching me my face monday coffee "
         "nobody expects meeting again why always this that banana office plant weekend").split()


def bench_download(workers: int, n_images: int, latency: float, tmp: Path) -> dict:
    # The server runs in its own process so that the client measured here does not share its GIL.
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "hic_server.py"), "--images", str(n_images),
                               "--latency", str(latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:"), base_url
        data = tmp / f"dl_{workers}"
        data.mkdir()
        with open(data / ph.IMAGE_INFO_CSV, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", "image_url"])
            for i in range(n_images):
                w.writerow([f"im{i:06d}", f"{base_url}/img/{i}.jpg"])
        out = tmp / f"dl_out_{workers}"
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        rc = ph.main(["download", "--data-dir", str(data), "--out-dir", str(out), "--workers", str(workers),
                      "--quiet"])
        elapsed = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    assert rc == 0
    saved = len(os.listdir(out / "image"))
    assert saved == n_images, (saved, n_images)
    return {"workers": workers, "images": n_images, "seconds": round(elapsed, 3),
            "images_per_second": round(n_images / elapsed, 1),
            "ideal_images_per_second": round(workers / latency, 1),
            "client_cpu_ms_per_image": round((cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime)
                                             / n_images * 1000, 2)}


def make_synthetic_csv(path: Path, rows: int, seed: int = 0) -> None:
    """About 3 captions per image, scores with a long tail, some '1,234' scores and some junk rows."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "caption", "funny_score"])
        image = 0
        written = 0
        while written < rows:
            for _ in range(rng.randint(1, 5)):
                n = rng.randint(3, 16)
                caption = " ".join(rng.choice(WORDS) for _ in range(n))
                if rng.random() < 0.05:
                    caption = f'"{caption}," he said'
                score = int(rng.paretovariate(1.2)) - 1
                score_text = f"{score:,}" if score >= 1000 else str(score)
                if rng.random() < 0.002:
                    score_text = "n/a"
                w.writerow([f"{image:08d}", caption, score_text])
                written += 1
                if written >= rows:
                    break
            image += 1


def _run_measured(cmd: list[str]) -> tuple[float, int]:
    """Run cmd; return (seconds, peak RSS in bytes) sampled with psutil every 20 ms."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return elapsed, peak


def bench_select(rows: int, tmp: Path) -> dict:
    data = tmp / f"data_{rows}.csv"
    t0 = time.perf_counter()
    make_synthetic_csv(data, rows)
    gen = time.perf_counter() - t0
    out = tmp / f"sel_{rows}"
    base = [sys.executable, str(REPO / "dataset" / "prepare_hic.py")]
    sel_s, sel_rss = _run_measured(base + ["select", "--data-csv", str(data),
                                           "--out-dir", str(out), "--skip-image-check", "--quiet"])
    split_s, split_rss = _run_measured(base + ["split", "--out-dir", str(out), "--top-k", "1", "--quiet"])
    stats = json.loads((out / "stats.json").read_text())
    result = {
        "rows": rows, "csv_mb": round(data.stat().st_size / 2**20, 1), "generate_seconds": round(gen, 1),
        "select_seconds": round(sel_s, 2), "select_rows_per_second": round(rows / sel_s),
        "select_peak_rss_mb": round(sel_rss / 2**20, 1),
        "split_seconds": round(split_s, 2), "split_peak_rss_mb": round(split_rss / 2**20, 1),
        "images_kept": stats["select"]["images_with_captions"], "captions_kept": stats["select"]["captions_kept"],
    }
    data.unlink()
    shutil.rmtree(out)
    return result


def write_report(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_hic.json").write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    lines = [
        "# Oxford HIC preparation benchmark",
        "",
        f"Written by `python benchmarks/bench_hic.py{' --quick' if results['quick'] else ''}` on "
        f"{env['date']}: {env['cpu_count']} CPU cores, Python {env['python']}, {env['platform']}; "
        f"load average at start {env['load_average_at_start']} (a shared machine: other jobs slow it down).",
        "",
        f"## Download (local server on 127.0.0.1, {int(results['latency_s'] * 1000)} ms latency per request)",
        "",
        "Each image: fetch, verify with Pillow, convert to RGB JPEG, atomic write. The server (Python "
        "`http.server`, one thread per request) runs in a second process on the same machine, so on a "
        "small machine it competes with the client for the CPU: beyond a few workers the numbers are "
        "CPU-bound, not latency-bound. `client CPU ms/image` is the downloader's own cost.",
        "",
        "| workers | images | seconds | images/s | latency bound (workers / latency) | client CPU ms/image |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["download"]:
        lines.append(f"| {r['workers']} | {r['images']} | {r['seconds']} | {r['images_per_second']} | "
                     f"{r['ideal_images_per_second']} | {r['client_cpu_ms_per_image']} |")
    lines += [
        "",
        "## Selection (synthetic oxford_hic_data.csv, about 3 captions per image)",
        "",
        "`select` streams the CSV row by row into hash partitions and ranks one partition at a time; "
        "peak RSS is sampled every 20 ms from the selecting process.",
        "",
        "| rows | CSV MB | select s | rows/s | select peak RSS MB | split s | split peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["select"]:
        lines.append(f"| {r['rows']:,} | {r['csv_mb']} | {r['select_seconds']} | {r['select_rows_per_second']:,} | "
                     f"{r['select_peak_rss_mb']} | {r['split_seconds']} | {r['split_peak_rss_mb']} |")
    lines.append("")
    (RESULTS / "bench_hic.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--latency", type=float, default=0.05)
    args = p.parse_args(argv)
    sizes = {1: 40, 8: 200, 32: 400} if not args.quick else {1: 10, 8: 40, 32: 80}
    select_rows = [1_000_000, 3_000_000] if not args.quick else [20_000]
    results = {
        "quick": args.quick,
        "latency_s": args.latency,
        "environment": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "date": time.strftime("%Y-%m-%d"),
                        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "download": [],
        "select": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_hic_") as tmp_name:
        tmp = Path(tmp_name)
        for workers, n in sizes.items():
            r = bench_download(workers, n, args.latency, tmp)
            print(f"download workers={workers}: {r['images_per_second']} images/s", flush=True)
            results["download"].append(r)
        for rows in select_rows:
            r = bench_select(rows, tmp)
            print(f"select rows={rows}: {r['select_rows_per_second']} rows/s, peak RSS "
                  f"{r['select_peak_rss_mb']} MB", flush=True)
            results["select"].append(r)
    results["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["children_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    write_report(results)
    print(f"wrote {RESULTS / 'bench_hic.json'} and {RESULTS / 'bench_hic.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
