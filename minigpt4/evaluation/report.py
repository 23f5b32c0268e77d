"""Write an evaluation report folder: metrics.json, per_image.jsonl, length_hist.png, index.html.

Every file is written whole or not at all. The page is a list of sections (functions of the
metrics returning HTML); a caller adds its own with ``extra_sections`` (before the length histogram)
and may replace the gallery with its own (``gallery``). ``metrics["warnings"]`` are shown first.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from minigpt4.common.atomic import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from minigpt4.common.errors import EvaluationError
from minigpt4.common.plots import new_figure, png_bytes
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
esc = html.escape
Section = Callable[[dict], str]


def _fmt(value, missing: str = "–") -> str:
    if value is None:
        return missing
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def histogram_png(generated: list[int], references_lengths: list[int]) -> bytes:
    top = max(generated + references_lengths + [1])
    bins = range(0, min(top, 80) + 2)
    fig, ax = new_figure(figsize=(7, 3.5), dpi=100)
    ax.hist(references_lengths, bins=bins, alpha=0.55, density=True, label=f"human ({len(references_lengths)})")
    ax.hist(generated, bins=bins, alpha=0.55, density=True, label=f"generated ({len(generated)})")
    ax.set_xlabel("caption length (words)")
    ax.set_ylabel("fraction of captions")
    ax.legend()
    return png_bytes(fig)


def _image_src(image: str, out_dir: Path) -> str:
    if not image:
        return ""
    path = Path(image).resolve()
    try:
        return Path(os.path.relpath(path, out_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path.as_uri()


# -- sections ---------------------------------------------------------------------------------------
def summary_section(metrics: dict) -> str:
    parts = []
    sources = metrics.get("sources")
    if sources:
        parts.append("<p>" + " · ".join(f"{esc(k)}: <code>{esc(str(v))}</code>" for k, v in sources.items()) + "</p>")
    model = metrics.get("model")
    if model:
        parts.append(f"<p>Model: <code>{esc(str(model.get('model_type', '')))}</code> · checkpoint "
                     f"<code>{esc(str(model.get('ckpt', '')))}</code></p>")
    parts.append(f"<p>{metrics['num_captions']} captions of {metrics['num_images']} images.</p>")
    parts.append("<h2>Reference overlap (not a humour measure)</h2>")
    parts.append("<table class='metrics'><tr>" + "".join(f"<th>{m}</th>" for m in METRIC_NAMES) + "</tr><tr>"
                 + "".join(f"<td>{_fmt(metrics['metrics'][m])}</td>" for m in METRIC_NAMES) + "</tr></table>")
    div, lengths = metrics["diversity"], metrics["length"]
    parts.append(
        f"<p>Diversity: distinct-1 {_fmt(div['distinct-1'])}, distinct-2 {_fmt(div['distinct-2'])}, "
        f"self-BLEU-4 {_fmt(div.get('self-BLEU-4'), 'not computed')}, vocabulary {div['vocabulary_size']} words. "
        f"Length: mean {_fmt(lengths['generated'].get('mean'))} words (human "
        f"{_fmt(lengths['references'].get('mean'))}).</p>")
    return "\n".join(parts)


def warnings_section(metrics: dict) -> str:
    """What must be read before any number (e.g. captions reranked by the scorer that evaluates them)."""
    warnings = metrics.get("warnings") or []
    return "".join(f"<p class='warn'><b>Warning:</b> {esc(w)}</p>" for w in warnings)


def notes_section(metrics: dict) -> str:
    unmatched, notes = metrics["unmatched"], []
    if unmatched["captions_without_references"]:
        notes.append(f"{unmatched['captions_without_references']} captioned image(s) have no reference and are "
                     f"not scored: {esc(', '.join(unmatched['captions_without_references_ids'][:20]))}")
    if unmatched["references_without_captions"]:
        notes.append(f"{unmatched['references_without_captions']} reference image(s) were not captioned")
    if unmatched["caption_errors"]:
        notes.append(f"{unmatched['caption_errors']} image(s) could not be read by caption.py: "
                     f"{esc(', '.join(unmatched['caption_error_ids'][:20]))}")
    captions_file = metrics.get("captions_file", {})
    if captions_file.get("duplicate_lines"):
        shown = ", ".join(f"{d['image_id']} #{d['caption_index']}" for d in captions_file["duplicates"][:10])
        notes.append(f"{captions_file['duplicate_lines']} repeated caption line(s) counted once: {esc(shown)}")
    if captions_file.get("torn_last_line"):
        notes.append(f"the last line ({captions_file['torn_last_line']}) of the captions file was cut short and "
                     "skipped")
    return "<p class='warn'>" + "<br>".join(notes) + "</p>" if notes else ""


def histogram_section(metrics: dict) -> str:
    return "<h2>Caption lengths</h2><img src='length_hist.png' alt='caption length histogram'>"


def gallery_section(rows: list[dict], out_dir: Path, sort_by: str, ascending: bool, top_references: int) -> str:
    if not rows:
        return ""
    order = "lowest" if ascending else "highest"
    parts = [f"<h2>Gallery ({len(rows)} captions, {order} {esc(sort_by)} first)</h2>"]
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
    return "\n".join(parts)


# -- the folder -------------------------------------------------------------------------------------
def check_report_dir(out_dir) -> Path:
    """The report folder, made now; a file of that name or an unwritable place is an error."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"--out {out_dir} is a file; --out names the report folder (e.g. runs/report/).")
    try:
        ensure_writable_dir(out_dir)
    except OSError as err:
        raise EvaluationError(f"--out {out_dir} cannot be written ({err.strerror or err}).") from err
    return out_dir


def write_report(result: EvaluationResult, out_dir, sort_by: str = "CIDEr-D", ascending: bool = False,
                 gallery_size: int = 200, top_references: int = 3, sources: dict | None = None,
                 extra_sections: Sequence[Section] = (), gallery: Section | None = None) -> dict:
    """Write the report into ``out_dir``; returns the paths written."""
    if sort_by not in METRIC_NAMES and sort_by != "length":
        raise EvaluationError(f"Unknown --sort-by {sort_by!r}; choose one of {', '.join(METRIC_NAMES)}, length.")
    if gallery_size < 0:
        raise EvaluationError(f"--gallery-size must be 0 or more; got {gallery_size}.")
    out_dir = check_report_dir(out_dir)
    metrics = dict(result.metrics)
    if sources:
        metrics["sources"] = sources
    paths = {"metrics": out_dir / "metrics.json", "per_image": out_dir / "per_image.jsonl",
             "histogram": out_dir / "length_hist.png", "html": out_dir / "index.html"}
    atomic_write_text(paths["metrics"], json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(paths["per_image"], "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                                  for row in result.per_caption))

    seen, ref_lengths = set(), []
    for row in result.per_caption:
        if row["image_id"] not in seen:
            seen.add(row["image_id"])
            ref_lengths += [len(tokenize(r["caption"])) for r in row["references"]]
    atomic_write_bytes(paths["histogram"], histogram_png([row["length"] for row in result.per_caption], ref_lengths))

    rows = sorted(result.per_caption, key=lambda r: r[sort_by], reverse=not ascending)[:gallery_size]
    sections = [warnings_section, summary_section, notes_section, *extra_sections, histogram_section]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Caption evaluation</title>"
             f"<style>{CSS}</style></head><body><h1>Caption evaluation</h1>"]
    parts += [section(metrics) for section in sections]
    parts += [gallery(metrics) if gallery else gallery_section(rows, out_dir, sort_by, ascending, top_references),
              "</body></html>"]
    atomic_write_text(paths["html"], "\n".join(p for p in parts if p))
    return paths
