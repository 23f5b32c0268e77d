"""The scorer card as one self-contained HTML page (no scripts, no network)."""

from __future__ import annotations

import html

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9rem}
.caveat{background:#fff6d6;border:1px solid #e6c96b;padding:.6rem;margin:1rem 0}"""

METRICS = (("pairwise_accuracy", "ci95", "pairwise accuracy (within-image pairs)"),
           ("kendall_tau", "kendall_tau_ci95", "within-image Kendall tau-b"),
           ("ndcg", "ndcg_ci95", "NDCG (gain log1p(funny_score))"),
           ("top1_accuracy", "top1_accuracy_ci95", "top-1 accuracy (best human caption scored highest)"),
           ("mismatch_accuracy", "mismatch_accuracy_ci95", "mismatch accuracy (own best vs another image's)"))


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _ci(ci) -> str:
    return "-" if not ci or ci[0] is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_card(card: dict) -> str:
    scorer = card.get("scorer") or {}
    metrics = _table(["metric", "value", "95% CI (bootstrap over images)"],
                     [[html.escape(label), _num(card.get(key)), _ci(card.get(ci))] for key, ci, label in METRICS])
    buckets = _table(["log margin bucket (vote ratio)", "pairwise accuracy", "95% CI", "pairs"],
                     [[html.escape(name), _num(b["pairwise_accuracy"]), _ci(b["ci95"]), _num(b["num_pairs"])]
                      for name, b in (card.get("by_margin") or {}).items()])
    base_rows = [["this scorer", _num(card.get("pairwise_accuracy")), _ci(card.get("ci95")), ""]]
    for name, b in (card.get("baselines") or {}).items():
        note = b.get("rule") or b.get("note") or ""
        base_rows.append([html.escape(name.replace("_", " ")), _num(b.get("pairwise_accuracy")), _ci(b.get("ci95")),
                          html.escape(note)])
    baselines = _table(["pairwise accuracy on the same pairs", "value", "95% CI", "note"], base_rows)
    skipped = card.get("skipped") or {}
    facts = _table(["", ""], [[html.escape(k.replace("_", " ")), _num(v) if not isinstance(v, list)
                               else html.escape(", ".join(map(str, v)) or "-")] for k, v in skipped.items()])
    who = _table(["", ""], [[html.escape(k), html.escape(str(v))] for k, v in scorer.items()])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Humour scorer card</title><style>{_STYLE}</style></head>
<body><h1>Humour scorer card</h1>
<p>{_num(card.get('num_pairs'))} caption pairs of {_num(card.get('num_images'))} test images
({html.escape(str((card.get('data') or {}).get('data_dir', '')))}).</p>
<div class="caveat">{html.escape(card.get('caveat', ''))}</div>
<h2>Agreement with the HIC votes</h2>{metrics}
<h2>By vote margin</h2>{buckets}
<h2>Baselines</h2>{baselines}
<p class="note">random: a coin flip, 0.5 exactly; length: the better of "longer caption wins" and "shorter caption
wins"; shuffled images: this scorer with every image replaced by another test image; caption only: a scorer that
reads no image.</p>
<h2>Left out</h2>{facts}
<h2>Scorer</h2>{who}
</body></html>
"""
