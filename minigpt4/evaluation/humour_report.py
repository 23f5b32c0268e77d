"""The humour parts of the evaluation report: the summary table (humour, grounding, diversity and
originality with their CIs, the scorer card's headline beside them), the histogram of human
percentiles, the per-image gallery (generated captions with score and percentile beside the human
captions ranked by funny_score, sortable and filterable by percentile), ``per_caption.jsonl``; and,
for several captions files, the comparison page (``index.html`` and ``metrics.json`` above one report
folder per file)."""

from __future__ import annotations

import html
import json
from functools import partial
from pathlib import Path

from minigpt4.common.atomic import atomic_write_bytes, atomic_write_text
from minigpt4.common.plots import new_figure, png_bytes
from minigpt4.datasets.hic_format import image_path
from minigpt4.evaluation.humour_eval import GROUNDING, ORIGINALITY
from minigpt4.evaluation.report import CSS, _image_src, check_report_dir, write_report
from minigpt4.evaluation.suite import RunResult, clean

esc = html.escape
PER_CAPTION_FILE, HUMAN_FILE, PERCENTILE_PNG = "per_caption.jsonl", "human_captions.jsonl", "percentile_hist.png"
EXTRA_CSS = """table.summary td,table.summary th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:right}
table.summary td:first-child,table.summary th:first-child{text-align:left}tr.group td{background:#f6f6f6;
font-weight:600;text-align:left}.sig{color:#0a6b2a;font-weight:600}.pct{font-family:monospace}
#controls{margin:1em 0;padding:.5em;background:#f6f8fa;border-radius:6px}.gen li{margin:.2em 0}"""
_GALLERY_JS = """
(function () {
  const gallery = document.getElementById('gallery'), cards = Array.from(gallery.children);
  function apply() {
    const order = document.getElementById('sort').value;
    const lo = parseFloat(document.getElementById('pmin').value || '0');
    const hi = parseFloat(document.getElementById('pmax').value || '1');
    const pct = c => parseFloat(c.dataset.percentile);
    const sorted = cards.slice().sort((a, b) => order === 'id' ? a.dataset.image.localeCompare(b.dataset.image)
      : order === 'asc' ? pct(a) - pct(b) : pct(b) - pct(a));
    let shown = 0;
    for (const card of sorted) {
      const p = pct(card), visible = isNaN(p) || (p >= lo && p <= hi);
      card.style.display = visible ? '' : 'none';
      shown += visible;
      gallery.appendChild(card);
    }
    document.getElementById('shown').textContent = `${shown} of ${cards.length} images shown`;
  }
  for (const id of ['sort', 'pmin', 'pmax']) document.getElementById(id).addEventListener('input', apply);
  apply();
})();
"""


def _num(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else esc(str(value))


def _ci(ci) -> str:
    return "–" if not ci or ci[0] is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _stat_row(label: str, stat: dict | None) -> str:
    stat = stat or {}
    return (f"<tr><td>{esc(label)}</td><td>{_num(stat.get('mean'))}</td><td>{_ci(stat.get('ci95'))}</td>"
            f"<td>{_num(stat.get('num_images'))}</td></tr>")


def _group(title: str) -> str:
    return f"<tr class='group'><td colspan='4'>{esc(title)}</td></tr>"


def humour_summary_section(metrics: dict) -> str:
    if "originality" not in metrics:
        return ""
    rows = []
    humour = metrics.get("humour")
    if humour:
        rows.append(_group("Humour (relative to the image's own human test captions, same scorer)"))
        rows += [_stat_row(humour[key]["label"], humour[key]) for key in ("percentile", "beats_top", "beats_median")]
        rows += [_stat_row(f"pass@{k} (some caption of {k} beats the top human caption)", stat)
                 for k, stat in humour["pass_at_k"].items()]
        rows += [f"<tr><td colspan='4'>{esc(note)}</td></tr>" for note in humour["omitted_k"].values()]
        card = metrics.get("scorer_card_headline") or {}
        rows.append(f"<tr><td>scorer card: pairwise accuracy on these images' human captions "
                    f"({_num(card.get('num_pairs'))} pairs)</td><td>{_num(card.get('pairwise_accuracy'))}</td>"
                    f"<td>{_ci(card.get('ci95'))}</td><td>{_num(card.get('num_images'))}</td></tr>")
    grounding = metrics.get("grounding") or {}
    if "note" in grounding:
        rows += [_group("Grounding"), f"<tr><td colspan='4'>{esc(grounding['note'])}</td></tr>"]
    elif grounding:
        rows.append(_group("Grounding (the scorer's BLIP-2 ITC similarity)"))
        rows += [_stat_row(label, grounding.get(key)) for key, label in GROUNDING]
    orig = metrics["originality"]
    rows.append(_group("Diversity and originality"))
    rows += [_stat_row(label, orig.get(key)) for key, label in ORIGINALITY]
    div = metrics.get("diversity") or {}
    top = orig.get("top_caption_share") or {}
    for label, value in (("corpus distinct-1", div.get("distinct-1")), ("corpus distinct-2", div.get("distinct-2")),
                         ("self-BLEU-4 (lower is more diverse)", div.get("self-BLEU-4")),
                         (f"share of the most frequent caption ({top.get('count')}x: {top.get('caption')!r:.60})",
                          top.get("share"))):
        rows.append(f"<tr><td>{esc(label)}</td><td>{_num(value)}</td><td>–</td><td>–</td></tr>")
    scorer = metrics.get("scorer") or {}
    who = (f"<p>Scorer: <code>{esc(str(scorer.get('cfg')))}</code>, head checkpoint "
           f"<code>{esc(str(scorer.get('ckpt')))}</code> (sha256 <code>{esc(str(scorer.get('ckpt_sha256')))}</code>)."
           "</p>") if scorer else ""
    return (f"<style>{EXTRA_CSS}</style><h2>Humour, grounding, diversity</h2>{who}<table class='summary'><tr>"
            "<th>metric (mean over images)</th><th>value</th><th>95% CI (bootstrap over images)</th><th>images</th>"
            "</tr>" + "".join(rows) + "</table>")


def percentile_png(percentiles: list[float]) -> bytes:
    fig, ax = new_figure(figsize=(7, 3.2), dpi=100)
    ax.hist(percentiles, bins=[i / 10 for i in range(11)], color="#4c72b0", edgecolor="white")
    ax.set_xlabel("human percentile (share of the image's human captions scored below)")
    ax.set_ylabel("generated captions")
    ax.set_xlim(0, 1)
    return png_bytes(fig)


def percentile_section(metrics: dict) -> str:
    if not metrics.get("humour"):
        return ""
    return f"<h2>Human percentiles</h2><img src='{PERCENTILE_PNG}' alt='histogram of human percentiles'>"


def gallery(run: RunResult, data_dir, out_dir: Path, limit: int, metrics: dict) -> str:
    if limit == 0:
        return ""
    by_image: dict[str, list[dict]] = {}
    for row in run.rows:
        by_image.setdefault(row["image_id"], []).append(row)
    cards = []
    for image_id in list(by_image)[:limit]:
        stats = run.per_image.get(image_id, {})
        pct = stats.get("percentile")
        generated = "".join(
            f"<li>{esc(r['caption'])} <span class='score'>(#{r['caption_index']}"
            + (f" · score {r['humour_score']:.3f} · percentile {r['percentile']:.2f}"
               if r.get("humour_score") is not None else "")
            + (" · copies a training caption" if r.get("copy_near") else "") + ")</span></li>"
            for r in by_image[image_id])
        human = "".join(
            f"<li>{esc(h['caption'])} <span class='score'>(funny score {_num(h['funny_score'], 0)}"
            + (f" · score {h['humour_score']:.3f}" if h.get("humour_score") is not None else "") + ")</span></li>"
            for h in run.human.get(image_id, []))
        src = _image_src(str(image_path(data_dir, image_id)), out_dir)
        cards.append(
            f"<div class='card' data-image='{esc(image_id)}' data-percentile='{'' if pct is None else f'{pct:.6f}'}'>"
            f"<img src='{esc(src)}' alt='{esc(image_id)}' loading='lazy'><div><div class='score'>{esc(image_id)}"
            + (f" · mean percentile <span class='pct'>{pct:.3f}</span>" if pct is not None else "")
            + f"</div><b>Generated:</b><ol class='gen'>{generated}</ol><b>Human captions (by funny score):</b>"
            f"<ol class='refs'>{human}</ol></div></div>")
    controls = ("<div id='controls'>Sort <select id='sort'><option value='desc'>highest percentile first</option>"
                "<option value='asc'>lowest percentile first</option><option value='id'>image id</option></select> "
                "· percentile from <input id='pmin' type='number' min='0' max='1' step='0.05' value='0'> to "
                "<input id='pmax' type='number' min='0' max='1' step='0.05' value='1'> · <span id='shown'></span>"
                "</div>")
    return (f"<h2>Gallery ({len(cards)} of {len(by_image)} test images)</h2>{controls}<div id='gallery'>"
            + "".join(cards) + f"</div><script>{_GALLERY_JS}</script>")


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_run_report(run: RunResult, out_dir, data_dir=None, sort_by: str = "CIDEr-D", ascending: bool = False,
                     gallery_size: int = 200, sources: dict | None = None) -> dict:
    """One captions file's report folder; with ``data_dir`` the humour files and sections too."""
    out_dir = check_report_dir(out_dir)
    run.result.metrics = clean(run.result.metrics)
    extra, paths, own_gallery = [], {}, None
    if data_dir is not None:
        rows = clean(run.rows)
        run.per_image = clean(run.per_image)
        percentiles = [r["percentile"] for r in rows if r.get("percentile") is not None]
        human = [{"image_id": i, "rank": n, **h} for i, caps in clean(run.human).items() for n, h in enumerate(caps, 1)]
        blobs = {PER_CAPTION_FILE: _jsonl(rows), HUMAN_FILE: _jsonl(human)}
        if percentiles:
            blobs[PERCENTILE_PNG] = percentile_png(percentiles)
        for name, data in blobs.items():
            atomic_write_bytes(out_dir / name, data)
            paths[name] = out_dir / name
        extra = [humour_summary_section, percentile_section]
        own_gallery = partial(gallery, run, data_dir, out_dir, gallery_size)
    paths.update(write_report(run.result, out_dir, sort_by=sort_by, ascending=ascending,
                              gallery_size=gallery_size, sources=sources, extra_sections=extra,
                              gallery=own_gallery))
    return paths


# -- several files --------------------------------------------------------------------------------
HEADLINE = (("humour", "percentile", "human percentile"), ("humour", "beats_top", "win rate vs top human"),
            ("humour", "beats_median", "win rate vs median human"), ("grounding", "similarity", "similarity"),
            ("originality", "copy_near", "near copy rate"), ("originality", "distinct-2", "within-image distinct-2"))


def comparison_page(summary: dict) -> str:
    labels = list(summary["runs"])
    head = "".join(f"<th>{esc(name)}</th>" for _, _, name in HEADLINE)
    rows = []
    for label, run in summary["runs"].items():
        cells = "".join(f"<td>{_num((run.get(g) or {}).get(k, {}).get('mean'))}<br><span class='score'>"
                        f"{_ci((run.get(g) or {}).get(k, {}).get('ci95'))}</span></td>" for g, k, _ in HEADLINE)
        rows.append(f"<tr><td><a href='{esc(label)}/index.html'>{esc(label)}</a></td>{cells}</tr>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Caption comparison</title><style>{CSS}"
             f"{EXTRA_CSS}</style></head><body><h1>Comparison of {len(labels)} captions files</h1>"]
    parts += [f"<p class='warn'>{esc(w)}</p>" for w in summary.get("warnings", [])]
    parts.append("<h2>Each file (all its test images)</h2><table class='summary'><tr><th>file</th>" + head + "</tr>"
                 + "".join(rows) + "</table>")
    paired = summary["paired"]
    parts.append(f"<h2>Paired differences on the {paired['num_common_images']} images in every file</h2><p>Each "
                 "difference is the later file minus the first, with a paired bootstrap 95% CI (the same images "
                 "resampled for both); <span class='sig'>bold green</span>: the CI excludes 0.</p>")
    for comparison in paired["comparisons"]:
        lines = []
        for key, m in comparison["metrics"].items():
            sig = " class='sig'" if m["significant"] else ""
            lines.append(f"<tr><td>{esc(m['label'])}</td><td>{_num(m['a'])}</td><td>{_num(m['b'])}</td>"
                         f"<td{sig}>{_num(m['difference'])}</td><td{sig}>{_ci(m['ci95'])}</td>"
                         f"<td>{m['num_images']}</td></tr>")
        parts.append(f"<h3>{esc(comparison['b'])} &minus; {esc(comparison['a'])}</h3><table class='summary'><tr>"
                     f"<th>metric (per image)</th><th>{esc(comparison['a'])}</th><th>{esc(comparison['b'])}</th>"
                     "<th>difference</th><th>95% CI</th><th>images</th></tr>" + "".join(lines) + "</table>")
    parts += [f"<p>{esc(note)}</p>" for note in paired["omitted"].values()]
    left = {k: v for k, v in paired["left_out_images"].items() if v}
    if left:
        parts.append("<p class='warn'>Left out of the paired comparison (not in every file): "
                     + "; ".join(f"{esc(k)}: {esc(', '.join(v[:30]))}{' ...' if len(v) > 30 else ''}"
                                 for k, v in left.items()) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_comparison(summary: dict, out_dir) -> dict:
    out_dir = check_report_dir(out_dir)
    summary = clean(summary)
    paths = {"metrics": out_dir / "metrics.json", "html": out_dir / "index.html"}
    page = comparison_page(summary)
    atomic_write_text(paths["metrics"], json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(paths["html"], page)
    return paths
