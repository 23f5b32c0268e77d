"""Write an evaluation report folder: metrics.json, per_image.jsonl, length_hist.png, index.html."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from minigpt4.evaluation.captions import METRIC_NAMES, EvaluationResult, tokenize

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table.metrics td,table.metrics th{padding:.2em .8em;text-align:right;border-bottom:1px solid #ddd}
.card{display:flex;gap:1.2em;border-bottom:1px solid #ddd;padding:1em 0}
.card img{width:224px;height:224px;object-fit:cover;border-radius:6px;background:#eee}
.gen{font-size:1.1em;margin:.3em 0 .6em}
.refs li{margin:.15em 0;color:#444}
.score{font-family:monospace;color:#666;font-size:.9em}
.warn{background:#fff4e0;padding:.6em 1em;border-radius:6px}
"""


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_histogram(result: EvaluationResult, references_lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generated = [row["length"] for row in result.per_caption]
    top = max(generated + references_lengths + [1])
    bins = range(0, min(top, 80) + 2)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.hist(references_lengths, bins=bins, alpha=0.55, density=True, label=f"human ({len(references_lengths)})")
    ax.hist(generated, bins=bins, alpha=0.55, density=True, label=f"generated ({len(generated)})")
    ax.set_xlabel("caption length (words)")
    ax.set_ylabel("fraction of captions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _image_src(image: str, out_dir: Path) -> str:
    if not image:
        return ""
    path = Path(image).resolve()
    try:
        return Path(os.path.relpath(path, out_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path.as_uri()


def write_report(result: EvaluationResult, out_dir, sort_by: str = "CIDEr-D", ascending: bool = False,
                 gallery_size: int = 200, top_references: int = 3, sources: dict | None = None) -> dict:
    """Write the report into ``out_dir``; returns the paths written."""
    if sort_by not in METRIC_NAMES and sort_by != "length":
        raise ValueError(f"Unknown --sort-by {sort_by!r}; choose one of {', '.join(METRIC_NAMES)}, length.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = dict(result.metrics)
    if sources:
        metrics["sources"] = sources
    paths = {"metrics": out_dir / "metrics.json", "per_image": out_dir / "per_image.jsonl",
             "histogram": out_dir / "length_hist.png", "html": out_dir / "index.html"}
    paths["metrics"].write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with paths["per_image"].open("w", encoding="utf-8") as fh:
        for row in result.per_caption:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    seen, ref_lengths = set(), []
    for row in result.per_caption:
        if row["image_id"] not in seen:
            seen.add(row["image_id"])
            ref_lengths += [len(tokenize(r["caption"])) for r in row["references"]]
    write_histogram(result, ref_lengths, paths["histogram"])

    rows = sorted(result.per_caption, key=lambda r: r[sort_by], reverse=not ascending)[:gallery_size]
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Caption evaluation</title>"
             f"<style>{CSS}</style></head><body><h1>Caption evaluation</h1>"]
    if sources:
        parts.append("<p>" + " · ".join(f"{esc(k)}: <code>{esc(str(v))}</code>" for k, v in sources.items()) + "</p>")
    model = metrics.get("model")
    if model:
        parts.append(f"<p>Model: <code>{esc(str(model.get('model_type', '')))}</code> · checkpoint "
                     f"<code>{esc(str(model.get('ckpt', '')))}</code></p>")
    parts.append(f"<p>{metrics['num_captions']} captions of {metrics['num_images']} images.</p>")
    parts.append("<table class='metrics'><tr>" + "".join(f"<th>{m}</th>" for m in METRIC_NAMES) + "</tr><tr>"
                 + "".join(f"<td>{_fmt(metrics['metrics'][m])}</td>" for m in METRIC_NAMES) + "</tr></table>")
    div = metrics["diversity"]
    gen_len = metrics["length"]["generated"]
    parts.append(
        f"<p>Diversity: distinct-1 {_fmt(div['distinct-1'])}, distinct-2 {_fmt(div['distinct-2'])}, "
        f"self-BLEU-4 {_fmt(div.get('self-BLEU-4'))}, vocabulary {div['vocabulary_size']} words. "
        f"Length: mean {_fmt(gen_len.get('mean'))} words (human "
        f"{_fmt(metrics['length']['references'].get('mean'))}).</p>")
    unmatched = metrics["unmatched"]
    notes = []
    if unmatched["captions_without_references"]:
        notes.append(f"{unmatched['captions_without_references']} captioned image(s) have no reference and are "
                     f"not scored: {esc(', '.join(unmatched['captions_without_references_ids'][:20]))}")
    if unmatched["references_without_captions"]:
        notes.append(f"{unmatched['references_without_captions']} reference image(s) were not captioned")
    if unmatched["caption_errors"]:
        notes.append(f"{unmatched['caption_errors']} image(s) could not be read by caption.py: "
                     f"{esc(', '.join(unmatched['caption_error_ids'][:20]))}")
    if notes:
        parts.append("<p class='warn'>" + "<br>".join(notes) + "</p>")
    parts.append("<h2>Caption lengths</h2><img src='length_hist.png' alt='caption length histogram'>")
    order = "lowest" if ascending else "highest"
    parts.append(f"<h2>Gallery ({len(rows)} captions, {order} {esc(sort_by)} first)</h2>")
    for row in rows:
        src = _image_src(row["image"], out_dir)
        scores = " · ".join(f"{m} {_fmt(row[m])}" for m in ("BLEU-4", "ROUGE-L", "CIDEr-D"))
        refs = "".join(
            f"<li>{esc(r['caption'])} <span class='score'>(funny score {esc(_fmt(r['funny_score']))})</span></li>"
            for r in row["references"][:top_references])
        parts.append(
            f"<div class='card'><img src='{esc(src)}' alt='{esc(row['image_id'])}' loading='lazy'>"
            f"<div><div class='score'>{esc(row['image_id'])} · {esc(row['prompt'])}</div>"
            f"<div class='gen'><b>Generated:</b> {esc(row['caption'])}</div>"
            f"<div class='score'>{scores}</div><b>Top human captions:</b><ol class='refs'>{refs}</ol></div></div>")
    parts.append("</body></html>")
    paths["html"].write_text("\n".join(parts), encoding="utf-8")
    return paths
