"""The human study's page: one self-contained HTML file (images embedded, no network, no key) with K
blinded pairs, "A", "B" or "tie" per pair, and a button that downloads the answers as a JSON file."""

from __future__ import annotations

import base64
import html
import io
import json

from PIL import Image

MAX_SIDE = 448

_STYLE = """body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
.item{border:1px solid #ddd;border-radius:8px;padding:1rem;margin:1rem 0}.item img{max-width:100%;max-height:320px;
display:block;margin:0 auto .8rem;border-radius:6px}.choice{display:block;padding:.35rem .5rem;margin:.2rem 0;
border-radius:6px;cursor:pointer}.choice:hover{background:#f3f3f3}.cap{font-size:1.05rem}
#status{margin:1rem 0;font-weight:600}.intro{background:#f6f8fa;padding:.8rem 1rem;border-radius:8px}"""

_SCRIPT = """
const STUDY = JSON.parse(document.getElementById('study-data').textContent);
function answers() {
  const out = {};
  for (const item of STUDY.items) {
    const picked = document.querySelector(`input[name="${item}"]:checked`);
    if (picked) out[item] = picked.value;
  }
  return out;
}
function update() {
  const left = STUDY.items.length - Object.keys(answers()).length;
  document.getElementById('progress').textContent = left ? `${left} pair(s) left` : 'all pairs answered';
}
document.querySelectorAll('input[type=radio]').forEach(r => r.addEventListener('change', update));
document.getElementById('download').addEventListener('click', () => {
  const rater = document.getElementById('rater').value.trim();
  const given = answers();
  const status = document.getElementById('status');
  const left = STUDY.items.filter(i => !(i in given));
  if (!rater) { status.textContent = 'Please enter your name or rater id first.'; return; }
  if (left.length) { status.textContent = `Please answer every pair (${left.length} left, e.g. ${left[0]}).`; return; }
  const data = {study_id: STUDY.study_id, rater: rater, answers: given, submitted: new Date().toISOString()};
  const blob = new Blob([JSON.stringify(data, null, 2)], {type: 'application/json'});
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = `answers_${STUDY.study_id}_${rater.replace(/[^A-Za-z0-9_-]+/g, '_')}.json`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  status.textContent = `Saved ${link.download}; send this file back to the study's organiser.`;
});
update();
"""


def image_data_uri(path, max_side: int = MAX_SIDE) -> str:
    """The image as an embedded JPEG (at most ``max_side`` pixels a side)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_study(study_id: str, items: list[dict], title: str = "Which caption is funnier?") -> str:
    """``items``: ``{"id", "image" (a data URI), "A", "B"}`` in page order."""
    esc = html.escape
    blocks = []
    for number, item in enumerate(items, 1):
        name = esc(item["id"])
        options = "".join(
            f"<label class='choice'><input type='radio' name='{name}' value='{value}'> {text}</label>"
            for value, text in (("A", f"<b>A</b>: <span class='cap'>{esc(item['A'])}</span>"),
                                ("B", f"<b>B</b>: <span class='cap'>{esc(item['B'])}</span>"),
                                ("tie", "Equally funny (tie)")))
        blocks.append(f"<div class='item' id='item-{name}'><div>Pair {number} of {len(items)}</div>"
                      f"<img src='{item['image']}' alt='image {number}'>{options}</div>")
    data = json.dumps({"study_id": study_id, "items": [item["id"] for item in items]}).replace("</", "<\\/")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'; script-src 'unsafe-inline'\"><style>{_STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1><div class='intro'>For each image, pick the caption you find funnier, or "
            "&ldquo;tie&rdquo; if neither is. There are no right answers; go with your first reaction. When every "
            "pair is answered, enter your name (or the id you were given) and press <b>Download answers</b>."
            f"</div>{''.join(blocks)}<p><label>Your name or rater id: <input id='rater' autocomplete='off'>"
            "</label></p><p><button id='download' type='button'>Download answers</button> "
            "<span id='progress'></span></p><div id='status' role='status'></div>"
            f"<script type='application/json' id='study-data'>{data}</script><script>{_SCRIPT}</script>"
            "</body></html>")
