"""The compare page's layout: a column per run, a row per block and picture, one epoch slider.

Pure: it takes the columns (a run, or a seed group pictured by its first run, with the image
files that run logged and its health metrics) and returns one self-contained HTML page, every
picture a data: URI. Images logged at several epochs follow the shared slider (each shows its
newest step at or before the chosen epoch, its caption marked where that is another epoch);
grid pictures of one row are scaled alike, so a tile of one run is as large as a tile of another.
"""

from __future__ import annotations

import html
import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cnnexp.report.explorer import CAPTIONS, PER_BLOCK, SCRIPT, block_order
from cnnexp.report.pages import png_data_uri
from cnnexp.report.plots import colour, curves_figure
from cnnexp.report.select import RunRecord
from cnnexp.report.table import FACTS, MISSING, SeedGroup, best_val_acc, compact, spread

GRIDS = ("feature_maps", "top_patches", "kernels")  # tile grids: scaled alike, drawn pixelated
OTHER_ROWS = {  # section -> image keys without a block, in the order shown
    "Where the net looks": {"erf": "Effective receptive field", "gradcam": "Grad-CAM"},
    "Mistakes": {"confusion_matrix": "Confusion matrix"},
}
HEALTH = {  # health/<block>/<measure> (cnnexp/analysis/health.py) -> panel title, in order
    "grad_norm": "gradient norm",
    "dead_fraction": "dead units (ReLU)",
    "saturation": "saturated (sigmoid/tanh)",
    "mean": "activation mean",
    "std": "activation std",
}
LABEL_PX, COLUMN_PX = 150, 320  # the row labels' width; the least width of a run's column
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0 1em 2em;color:#222}"
    "h2{margin:1.2em 0 .3em}p{max-width:75em}"
    ".warning{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em;font-weight:600;"
    "max-width:75em}"
    "div.grid{overflow-x:auto}table{border-collapse:collapse;table-layout:fixed}"
    "th,td{border:1px solid #ddd;padding:4px;vertical-align:top;text-align:left;font-size:13px}"
    "th.label{position:sticky;left:0;background:#f6f6f6;z-index:1;font-weight:600;"
    "overflow-wrap:anywhere}"
    "th.label small{display:block;font-weight:400;color:#555;margin-top:.4em}"
    "tr.section th{background:#e9eef5;font-size:16px;padding:.4em;scroll-margin-top:4.5em}"
    "td.num{font-variant-numeric:tabular-nums}td.none{color:#888}"
    "figure{margin:0}img{max-width:100%}img.grid{image-rendering:pixelated}"
    ".step{font-size:12px;color:#555}.step.other{color:#b00;font-weight:600}"
    ".swatch{display:inline-block;width:1em;height:1em;vertical-align:middle;margin-right:.3em}"
    "#slider{position:sticky;top:0;background:#fff;padding:.6em 0;border-bottom:1px solid #ddd;"
    "z-index:2}#slider input{width:24em;vertical-align:middle}"
)


@dataclass(frozen=True)
class Column:
    """One column of the page: a run, or a seed group shown by its first run's pictures."""

    number: int  # from 1: the colour and number the figures give it
    label: str
    group: SeedGroup
    images: dict[str, dict[int, Path]]  # image key -> step (epochs trained) -> PNG file
    health: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # conv1/std -> pts

    @property
    def run(self) -> RunRecord:
        return self.group.first


def png_width(png: bytes) -> int:
    """A PNG's width in pixels, from its header."""
    return struct.unpack(">I", png[16:20])[0]


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def health_figure(block: str, columns: list[Column]) -> Figure | None:
    """A panel per health measure of `block`, a line per column over the epochs; None where no
    column logged the block's health."""
    measures = [m for m in HEALTH if any(f"{block}/{m}" in c.health for c in columns)]
    if not measures:
        return None
    epochs = [
        e
        for c in columns
        for k, pts in c.health.items()
        if k.startswith(f"{block}/")
        for e, _ in pts
    ]
    fig = Figure(figsize=(2.6 * len(measures), 2.3), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, measure in zip(fig.subplots(1, len(measures), squeeze=False)[0], measures, strict=True):
        for c in columns:
            points = c.health.get(f"{block}/{measure}")
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o", ms=3, color=colour(c.number), label=c.label)
        ax.set_title(HEALTH[measure], fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # every column's epochs; one: not ±0.05
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig


def label_cell(title: str, kind: str = "") -> str:
    caption = CAPTIONS.get(kind, "")
    small = f"<small>{html.escape(caption)}</small>" if caption else ""
    return f"<th class='label'>{html.escape(title)}{small}</th>"


def image_cell(column: Column, key: str, widest: int, shots: dict) -> str:
    """The column's picture `key` at its newest step; several steps: it follows the slider
    (its other steps go into `shots`)."""
    steps = column.images.get(key)
    if not steps:
        return "<td class='none'>not logged by this run</td>"
    pngs = {step: path.read_bytes() for step, path in steps.items()}
    newest = max(pngs)
    follows = ""
    if len(pngs) > 1:
        cell_id = f"c{column.number}:{key}"
        shots[cell_id] = [[s, None if s == newest else png_data_uri(p)] for s, p in pngs.items()]
        follows = f" data-key='{html.escape(cell_id)}'"
    grid = key.split("/")[0] in GRIDS
    width = f" style='width:{100 * png_width(pngs[newest]) / widest:.1f}%'" if grid else ""
    return (
        f"<td><figure><span class='step'>epoch {newest}</span><br><img alt='{html.escape(key)}'"
        f" class='{'grid' if grid else 'figure'}' data-run='{column.run.run_id}'{follows}{width}"
        f" src='{png_data_uri(pngs[newest])}'></figure></td>"
    )


def image_row(title: str, key: str, columns: list[Column], shots: dict) -> str:
    newest = [c.images[key][max(c.images[key])] for c in columns if c.images.get(key)]
    widest = max((png_width(p.read_bytes()) for p in newest), default=1)
    cells = "".join(image_cell(c, key, widest, shots) for c in columns)
    return f"<tr>{label_cell(title, key.split('/')[0])}{cells}</tr>\n"


def spanning_row(title: str, png: bytes, alt: str, n: int) -> str:
    return (
        f"<tr>{label_cell(title)}<td colspan='{n}'><img class='figure' alt='{html.escape(alt)}' "
        f"src='{png_data_uri(png)}'></td></tr>\n"
    )


def section_row(title: str, n: int) -> str:
    anchor = title.lower().replace(" ", "-")
    return (
        f"<tr class='section'><th colspan='{n + 1}' id='{anchor}'>{html.escape(title)}</th></tr>\n"
    )


def text_row(title: str, values: list[str], numeric: bool = False) -> str:
    cls = " class='num'" if numeric else ""
    cells = "".join(f"<td{cls}>{html.escape(v)}</td>" for v in values)
    return f"<tr>{label_cell(title)}{cells}</tr>\n"


def run_rows(columns: list[Column], differing: list[str]) -> str:
    """Who each column is, what differs between them, and what they measured."""
    heads = "".join(
        f"<th><span class='swatch' style='background:{to_hex(colour(c.number))}'></span>"
        f"{c.number}&nbsp; {html.escape(c.label)}<br><small>{html.escape(c.run.status)} · run "
        f"{c.run.run_id}</small></th>"
        for c in columns
    )
    rows = f"<tr><th class='label'>run</th>{heads}</tr>\n"
    rows += "".join(
        text_row(key, [compact(c.run.params.get(key, MISSING)) for c in columns])
        for key in differing
    )
    if any(len(c.group.runs) > 1 for c in columns):
        rows += text_row("seeds (pictures: the first)", [", ".join(c.group.seeds) for c in columns])
    best = [[b for r in c.group.runs if (b := best_val_acc(r))] for c in columns]
    rows += text_row(
        "test_acc", [spread(c.group.values("test_acc"), "{:.4f}".format) for c in columns], True
    )
    rows += text_row(
        "best val_acc", [spread([v for v, _ in b], "{:.4f}".format) for b in best], True
    )
    for title, metric, fmt in FACTS:
        if any(c.group.values(metric) for c in columns):
            rows += text_row(title, [spread(c.group.values(metric), fmt) for c in columns], True)
    fits = [", ".join(r.tags.get("fit_diagnosis", MISSING) for r in c.group.runs) for c in columns]
    return rows + text_row("fit", fits)


def picture_rows(columns: list[Column], shots: dict) -> str:
    """Blocks (feature maps, top patches, health), kernels, then the whole net's pictures."""
    n, keys = len(columns), set().union(*(c.images for c in columns))
    blocks = {k.split("/", 1)[1] for k in keys if k.split("/")[0] in PER_BLOCK}
    blocks |= {k.split("/")[0] for c in columns for k in c.health}
    rows = section_row("Blocks", n)
    for block in sorted(blocks, key=block_order):
        for kind, title in PER_BLOCK.items():
            if f"{kind}/{block}" in keys:
                rows += image_row(f"{block}: {title.lower()}", f"{kind}/{block}", columns, shots)
        fig = health_figure(block, columns)
        if fig is not None:
            rows += spanning_row(f"{block}: health", figure_png(fig), f"health/{block}", n)
    kernels = sorted((k for k in keys if k.startswith("kernels/")), key=block_order)
    if kernels:
        rows += section_row("Kernels", n)
        rows += "".join(image_row(k, k, columns, shots) for k in kernels)
    for section, wanted in OTHER_ROWS.items():
        present = {k: t for k, t in wanted.items() if k in keys}
        if present:
            rows += section_row(section, n)
            rows += "".join(image_row(t, k, columns, shots) for k, t in present.items())
    return rows


def slider_html(shots: dict) -> tuple[str, str]:
    """The shared epoch slider and its script; nothing where no picture has several epochs."""
    epochs = sorted({step for shot in shots.values() for step, _ in shot})
    if not epochs:
        return "", ""
    slider = (
        f"<div id='slider'>epoch <input id='epoch' type='range' min='0' max='{len(epochs) - 1}' "
        f"value='{len(epochs) - 1}' step='1'> after epoch <b id='epoch-label'>{epochs[-1]}</b> "
        f"<small>(pictures logged after epochs {', '.join(map(str, epochs))}; 0 = before "
        "training; a red caption: that run has no picture of this epoch, its latest before "
        "is shown)</small></div>"
    )
    script = (
        f"<script type='application/json' id='shots'>{json.dumps(shots)}</script>"
        f"<script type='application/json' id='epochs'>{json.dumps(epochs)}</script>"
        f"<script>{SCRIPT}</script>"
    )
    return slider, script


def compare_page(
    title: str, notes: list[str], warnings: list[str], columns: list[Column], differing: list[str]
) -> str:
    """The page: warnings, notes, the slider, one table (a column per run), the script."""
    n, shots = len(columns), {}
    curves = figure_png(
        curves_figure([c.group for c in columns], {c.run.run_id: c.label for c in columns})
    )
    body = section_row("Runs", n) + run_rows(columns, differing)
    body += section_row("Learning curves", n) + spanning_row("validation", curves, "curves", n)
    body += picture_rows(columns, shots)
    slider, script = slider_html(shots)
    width = f"max(100%, {LABEL_PX + COLUMN_PX * n}px)"
    cols = f"<col style='width:{LABEL_PX}px'>" + "<col>" * n
    warned = "".join(f"<p class='warning'>{html.escape(w)}</p>\n" for w in warnings)
    said = "".join(f"<p>{html.escape(note)}</p>\n" for note in notes)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{warned}{said}{slider}\n<div class='grid'>"
        f"<table style='width:{width}'><colgroup>{cols}</colgroup>\n{body}</table></div>\n"
        f"{script}</body></html>\n"
    )
