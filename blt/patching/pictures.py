"""Pictures of a patched byte string: the BLT paper's entropy figure (PNG) and an HTML page.

    draw_png(view, "patches.png")      # matplotlib (Agg), imported only when drawing
    write_html(view, "patches.html")   # one self-contained page: inline CSS and JS, nothing fetched

A `PatchView` holds what both show: the bytes, where patches start, the entropy model's entropy
(of the distribution predicting each byte) and surprisal (of each byte) when there is an
entropy model, and the patcher's rule with its threshold.

PNG: the entropy of each byte as a line, the global threshold theta dashed (entropy and
entropy_relative patchers), a vertical mark before every patch start and, for inputs of at most
LABELLED_BYTES bytes, each byte written along the x axis. For equal-information patching the
line is the surprisal accumulated in the open patch (it restarts at every patch) against the
budget: a patch closes after the byte that reaches it.
HTML: every byte a <span> coloured by its entropy (white to red), a bar before every patch, and
the byte, its entropy, surprisal and patch in a panel on hover, or for byte N when the page is
opened as page.html#b=N (inline JS; the values ride in data-* attributes). Printable ASCII
shows as itself, a valid UTF-8 sequence as its character on its first byte (its continuation
bytes as slivers), a newline as a return arrow that breaks the line, a tab as an arrow, a
carriage return as \r, anything else as a hex escape.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blt.files import atomic_write_text, temporary_name

LABELLED_BYTES = 160  # inputs up to this long get every byte along the PNG's x axis
SHOWN = {ord("\n"): "\u21b5", ord("\t"): "\u21e5", ord("\r"): "\\r"}  # return and tab arrows, CR escaped
UTF8_LENGTH = [(0xC2, 0xDF, 2), (0xE0, 0xEF, 3), (0xF0, 0xF4, 4)]  # lead byte range -> sequence length


@dataclass
class PatchView:
    data: bytes
    starts: np.ndarray  # (n,) bool: byte i starts a patch
    entropy: np.ndarray | None  # (n,) nats of the distribution predicting byte i; None without entropy model
    surprisal: np.ndarray | None  # (n,) nats of byte i under that distribution
    kind: str  # the patcher kind
    rule: str  # the patcher, as repr() shows it
    threshold: float | None = None  # theta (entropy, entropy_relative) or the budget (equal_info)
    title: str = ""


def byte_labels(data: bytes) -> list[str]:
    """One display string per byte: printable ASCII as itself, a UTF-8 character on its first
    byte and '' on its continuation bytes, newline and tab as arrows, CR as \\r, other bytes as
    \\xNN."""
    labels, i = [], 0
    while i < len(data):
        b = data[i]
        length = next((n for lo, hi, n in UTF8_LENGTH if lo <= b <= hi), 1)
        try:
            char = data[i : i + length].decode("utf-8") if length > 1 else None
        except UnicodeDecodeError:
            char, length = None, 1
        if char is not None:
            labels += [char] + [""] * (length - 1)
            i += length
            continue
        labels.append(SHOWN.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}"))
        i += 1
    return labels


def accumulated(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The running sum of values within each patch, restarting at every start. (n,)"""
    total = np.cumsum(values, dtype=np.float64)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(values)), 0))  # the patch's first byte
    before = np.concatenate([[0.0], total])[first]  # the sum before the patch began
    return total - before


def draw_png(view: PatchView, path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(view.data)
    labelled = n <= LABELLED_BYTES
    fig, ax = plt.subplots(figsize=(min(max(8.0, 0.12 * n), 24.0) if labelled else 14.0, 3.8))
    x = np.arange(n)
    style = {"marker": "." if n <= 600 else None, "lw": 1.0, "color": "C0"}
    if view.kind == "equal_info" and view.surprisal is not None:
        ax.plot(x, accumulated(view.surprisal, view.starts), label="surprisal accumulated in the patch", **style)
        ylabel, name = "nats", "budget"
    elif view.entropy is not None:
        ax.plot(x, view.entropy, label="entropy of the next-byte distribution", **style)
        ylabel, name = "entropy (nats)", "\u03b8"
    else:
        ylabel, name = "", ""
    if view.threshold is not None and name:
        ax.axhline(view.threshold, ls="--", color="C3", lw=1.0, label=f"{name} = {view.threshold:.3f}")
    ymin, ymax = ax.get_ylim() if ylabel else (0.0, 1.0)
    ax.vlines(np.flatnonzero(view.starts) - 0.5, ymin, ymax, color="0.55", lw=0.7, label="patch start")
    ax.set_ylim(ymin, ymax)
    ax.set_xlim(-1, n)
    if labelled:
        labels = [{" ": "\u2423"}.get(s, s) or "\u00b7" for s in byte_labels(view.data)]
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontfamily="monospace", fontsize=8)
        for tick, label in zip(ax.get_xticklabels(), labels):
            tick.set_rotation(90 if len(label) > 1 else 0)
    else:
        ax.set_xlabel("byte")
    ax.set_ylabel(ylabel)
    ax.set_title(view.title or view.rule, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    tmp = temporary_name(path)
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.1em; margin: 0 0 .3em; }}
#meta {{ color: #555; font-size: .9em; margin-bottom: .8em; }}
#info {{ position: sticky; top: 0; background: #f4f4f4; border: 1px solid #ccc; padding: .4em .6em;
  font-family: ui-monospace, monospace; font-size: .85em; min-height: 1.2em; margin-bottom: .8em; }}
#text {{ font-family: ui-monospace, monospace; font-size: 15px; line-height: 1.9; white-space: pre-wrap;
  word-break: break-all; }}
#text span {{ padding: 1px 0; }}
#text span.s {{ border-left: 2px solid #222; margin-left: 2px; }}
#text span.c {{ padding-left: 3px; }}
#text span.n {{ color: #777; }}
#text span:hover {{ outline: 1px solid #000; }}
.scale {{ display: inline-block; width: 12em; height: .8em; vertical-align: middle;
  background: linear-gradient(to right, {low}, {high}); border: 1px solid #bbb; }}
</style></head>
<body>
<h1>{title}</h1>
<div id="meta">{rule} &middot; <span id="summary">{n} bytes</span> &middot; {legend}</div>
<div id="info">hover over a byte</div>
<div id="text">{spans}</div>
<script>
"use strict";
const spans = document.querySelectorAll("#text > span");
let patch = -1;
spans.forEach((s, i) => {{
  if (s.classList.contains("s")) patch += 1;
  s.dataset.i = i;
  s.dataset.p = patch;
}});
document.getElementById("summary").textContent = spans.length + " bytes in " + (patch + 1) + " patches";
const info = document.getElementById("info");
const nats = v => (v === undefined ? "-" : Number(v).toFixed(3) + " nats");
function show(s) {{
  const d = s.dataset, b = Number(d.b);
  info.textContent = "byte " + d.i + ": 0x" + b.toString(16).padStart(2, "0") + " (" + b + ")  patch " + d.p +
    (d.s === "1" ? " (starts here)" : "") + "  entropy " + nats(d.h) + "  surprisal " + nats(d.u);
}}
document.getElementById("text").addEventListener("mouseover", e => {{
  const s = e.target.closest("#text > span");
  if (s) show(s);
}});
const linked = /^#b=(\\d+)$/.exec(location.hash);  // page.html#b=N shows byte N
if (linked && spans[Number(linked[1])]) show(spans[Number(linked[1])]);
</script>
</body></html>
"""
LOW, HIGH = (255, 255, 255), (220, 40, 30)  # entropy 0 and the page's largest entropy


def _colour(t: float) -> str:
    r, g, b = (round(lo + (hi - lo) * t) for lo, hi in zip(LOW, HIGH))
    return f"#{r:02x}{g:02x}{b:02x}"


def html_page(view: PatchView) -> str:
    """The page (see the module docstring), as a string."""
    labels = byte_labels(view.data)
    top = float(view.entropy.max()) if view.entropy is not None and len(view.entropy) else 0.0
    patch_colours = ("#d8f0f4", "#f8ecc4")  # without entropies, patches alternate like the terminal's
    out, patch = [], -1
    for i, b in enumerate(view.data):
        start = bool(view.starts[i])
        patch += start
        classes = ["s"] * start + ["c"] * (labels[i] == "") + ["n"] * (len(labels[i]) > 1)
        attrs = f' data-b="{b}"'
        if view.entropy is not None:
            h = float(view.entropy[i])
            attrs += f' data-h="{h:.4f}" data-u="{float(view.surprisal[i]):.4f}"'
            colour = _colour(h / top if top > 0 else 0.0)
        else:
            colour = patch_colours[patch % 2]
        attrs += f' style="background:{colour}"'
        if start:
            attrs += ' data-s="1"'
        cls = f' class="{" ".join(classes)}"' if classes else ""
        out.append(f"<span{cls}{attrs}>{html.escape(labels[i])}</span>" + ("\n" if b == 0x0A else ""))
    legend = (f'entropy 0 <span class="scale"></span> {top:.2f} nats' if view.entropy is not None
              else "patches in alternating colours")
    if view.threshold is not None:
        legend += f" &middot; {'budget' if view.kind == 'equal_info' else 'theta'} {view.threshold:.3f}"
    return PAGE.format(title=html.escape(view.title or "patches"), rule=html.escape(view.rule), n=len(view.data),
                       legend=legend, spans="".join(out), low=_colour(0.0), high=_colour(1.0))


def write_html(view: PatchView, path) -> Path:
    return atomic_write_text(path, html_page(view))
