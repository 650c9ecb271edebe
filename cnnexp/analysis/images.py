"""Pixels for the images the analysis logs, drawn to be read on an MLflow image card.

An MLflow image card shows the 256 px thumbnail `log_image` writes next to each image
(`COMPRESSED_IMAGE_SIZE`: the long side scaled to 256 px) and never enlarges it; a click opens
the full image. So each image is drawn `CARD_PX` = 2 × 256 px wide and no taller than wide (the
thumbnail is then 256 px wide), with text of `FONT_PX` (11 px on the card). Tile grids (feature
maps, kernels, top patches) upsample each small map by whole pixels (nearest neighbour: a map
pixel is a sharp square; a tile too large for the card, such as a deep layer's top patch, is
shrunk by area), wrap a long row of tiles into bands of a near-square grid, and label
every row and column; figures are drawn `CARD_PX` wide at `FIGURE_DPI` with 7-8 pt text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CARD_PX = 512  # the width an image is drawn for: twice the card's 256 px thumbnail
FIGURE_DPI = 200  # figures CARD_PX wide: 2.56 in; 8 pt = 22 px, 11 px on the card
FONT_PX = 20  # text size (em) in a tile grid: 10 px on the card
GAP = 2  # white pixels between tiles
OUTSIDE_RGB = (0.55, 0.75, 1.0)  # light blue: a patch's part past the image border (NaN)


def card_figure(height: float = 1.0) -> Figure:
    """An empty figure CARD_PX wide, `height` times as high (at most 1: the card's thumbnail is
    256 px wide only where the image is no taller than wide)."""
    width = CARD_PX / FIGURE_DPI
    fig = Figure(figsize=(width, width * min(height, 1.0)), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def minmax(t: torch.Tensor) -> torch.Tensor:
    """`t` scaled to [0, 1] by its own minimum and maximum (a constant tensor becomes 0)."""
    low, high = t.min(), t.max()
    return (t - low) / (high - low).clamp_min(1e-12)


def figure_pixels(fig: Figure) -> np.ndarray:
    """A drawn figure as an H×W×3 uint8 array, as MlflowClient.log_image takes it."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def viridis(t: torch.Tensor) -> np.ndarray:
    """An H×W map in [0, 1] -> H×W×3 float array in viridis (dark blue low, yellow high)."""
    return matplotlib.colormaps["viridis"](t.clamp(0, 1).numpy())[..., :3]


def as_input(t: torch.Tensor) -> np.ndarray:
    """C×H×W in [0, 1] drawn as the input looks: RGB when C = 3, else its first channel in grey;
    NaN (top_patches.OUTSIDE) in OUTSIDE_RGB."""
    t = t.float()
    rgb = t[:3] if t.shape[0] == 3 else t[:1].expand(3, -1, -1)
    picture = rgb.clamp(0, 1).permute(1, 2, 0).numpy().copy()
    picture[rgb.isnan().any(0).numpy()] = OUTSIDE_RGB
    return picture


@dataclass(frozen=True)
class TileGrid:
    """Tiles (H×W×3 floats in [0, 1]) in rows, a label per row and per column, a title of one
    or two lines; the first `lead` columns (the input image) repeat in every band of columns."""

    tiles: list[list[np.ndarray]]
    row_labels: list[str]
    col_labels: list[str]
    title: str
    lead: int = 0


@dataclass(frozen=True)
class Band:
    rows: list[int]
    cols: list[int]


def bands(grid: TileGrid, by: str, k: int) -> list[Band]:
    """The grid cut into `k` bands: of columns (stacked; `lead` columns in each) or of rows
    (side by side)."""
    n_rows, n_cols = len(grid.tiles), len(grid.col_labels)
    lead, free = list(range(grid.lead)), list(range(grid.lead, n_cols))
    if by == "cols":
        size = math.ceil(len(free) / k)
        return [
            Band(list(range(n_rows)), lead + free[i : i + size]) for i in range(0, len(free), size)
        ]
    size = math.ceil(n_rows / k)
    return [
        Band(list(range(i, min(i + size, n_rows))), lead + free) for i in range(0, n_rows, size)
    ]


def text_px(text: str, px: float = FONT_PX) -> int:
    """About how wide `text` is drawn at `px` (DejaVu Sans: ~0.6 em per character)."""
    return math.ceil(0.6 * px * len(text))


def _band_size(grid: TileGrid, band: Band, tile: tuple[int, int]) -> tuple[int, int]:
    label_w = max(text_px(grid.row_labels[r]) for r in band.rows) + 6
    return (
        2 * FONT_PX + len(band.rows) * (tile[0] + GAP),
        label_w + len(band.cols) * (tile[1] + GAP),
    )


def _extent(by: str, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(height, width) of bands of these sizes: stacked (bands of columns) or side by side."""
    heights, widths = [s[0] for s in sizes], [s[1] for s in sizes]
    return (sum(heights), max(widths)) if by == "cols" else (max(heights), sum(widths))


def _tile(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """A tile of `size` (height, width) drawn at `scale`, in whole pixels."""
    return max(1, math.floor(size[0] * scale)), max(1, math.floor(size[1] * scale))


def _largest_scale(
    grid: TileGrid, option: tuple[str, int], size: tuple[int, int], low: int, tile_px: int
) -> float:
    """The largest scale at which the layout is CARD_PX wide: a whole number, at least `low`
    (a map pixel a sharp square); where tiles are too large for the card even at 1 (a deep
    layer's top patch of a few hundred pixels), 1/d for the smallest whole d that fits, tiles
    kept at least `tile_px` on the short side."""

    def width(scale: float) -> int:
        tile = _tile(size, scale)
        return _extent(option[0], [_band_size(grid, b, tile) for b in bands(grid, *option)])[1]

    if low == 1 and width(1) > CARD_PX:
        d = 1
        while width(1 / d) > CARD_PX and min(size) / (d + 1) >= tile_px:
            d += 1
        return 1 / d
    scale = low
    while width(scale + 1) <= CARD_PX:
        scale += 1
    return scale


def _layout(
    grid: TileGrid, size: tuple[int, int], low: int, tile_px: int
) -> tuple[str, list[Band], float]:
    """(bands of "cols" or "rows", the bands, the tile scale): the layout whose picture, drawn
    CARD_PX wide, is closest to square, rather wider than taller."""
    n_rows, n_free = len(grid.tiles), len(grid.col_labels) - grid.lead
    options = [("cols", k) for k in range(1, n_free + 1)]
    options += [("rows", k) for k in range(2, n_rows + 1)]
    scales = {option: _largest_scale(grid, option, size, low, tile_px) for option in options}

    def skew(option: tuple[str, int]) -> float:
        tile = _tile(size, scales[option])
        h, w = _extent(option[0], [_band_size(grid, b, tile) for b in bands(grid, *option)])
        ratio = w / (h + 3 * FONT_PX)  # the title's lines count too
        return math.log(ratio) if ratio >= 1 else 3 * math.log(1 / ratio)  # taller is worse

    best = min(options, key=skew)
    return best[0], bands(grid, *best), scales[best]


def scaled(tile: np.ndarray, th: int, tw: int) -> np.ndarray:
    """`tile` (H×W×3) at th×tw: nearest neighbour when enlarged, the mean of each area when
    shrunk (a shrunk patch keeps what it shows, not every d-th pixel)."""
    if th < tile.shape[0] or tw < tile.shape[1]:
        chw = torch.from_numpy(np.ascontiguousarray(tile, dtype=np.float32)).permute(2, 0, 1)
        shrunk = torch.nn.functional.interpolate(chw[None], size=(th, tw), mode="area")
        return shrunk[0].permute(1, 2, 0).numpy()
    ys = np.arange(th) * tile.shape[0] // th
    xs = np.arange(tw) * tile.shape[1] // tw
    return tile[ys][:, xs]


def render_grid(grid: TileGrid, tile_px: int) -> np.ndarray:
    """The grid as one uint8 image near CARD_PX wide and no taller than wide (white space to
    the right where needed): tiles scaled (nearest neighbour, whole pixels) to the largest
    tile, at least `tile_px` on the short side, or shrunk to fit the card where the largest is
    too large for it; labelled."""
    h = max(t.shape[0] for row in grid.tiles for t in row)
    w = max(t.shape[1] for row in grid.tiles for t in row)
    by, layout, scale = _layout(grid, (h, w), max(1, math.ceil(tile_px / min(h, w))), tile_px)
    tile = _tile((h, w), scale)
    sizes = [_band_size(grid, b, tile) for b in layout]
    title_h = (grid.title.count("\n") + 1) * round(1.3 * FONT_PX) + 6
    starts = np.cumsum([0] + [s[0 if by == "cols" else 1] for s in sizes[:-1]])
    offsets = [(title_h + a, 0) if by == "cols" else (title_h, a) for a in starts.tolist()]
    height, width = _extent(by, sizes)
    height += title_h
    width = max(width, height, max(text_px(line) for line in grid.title.splitlines()) + 8)
    canvas = np.ones((height, width, 3))
    labels: list[Label] = []
    for band, (y0, x0), (_, band_w) in zip(layout, offsets, sizes, strict=True):
        left = x0 + band_w - len(band.cols) * (tile[1] + GAP)
        for j, c in enumerate(band.cols):
            centre = left + j * (tile[1] + GAP) + tile[1] / 2
            labels.append(Label(centre, y0 + FONT_PX, grid.col_labels[c]))
        for i, r in enumerate(band.rows):
            top = y0 + 2 * FONT_PX + i * (tile[0] + GAP)
            labels.append(Label(left - 5, top + tile[0] / 2, grid.row_labels[r], "right"))
            for j, c in enumerate(band.cols):
                x = left + j * (tile[1] + GAP)
                if c < len(grid.tiles[r]):
                    canvas[top : top + tile[0], x : x + tile[1]] = scaled(grid.tiles[r][c], *tile)
    return with_text(canvas, grid.title, labels)


@dataclass(frozen=True)
class Label:
    """Text drawn at pixel (x, y) of a canvas: centred vertically, aligned `align` ("left",
    "center", "right") horizontally, `px` high (em), in `colour`."""

    x: float
    y: float
    text: str
    align: str = "center"
    px: float = FONT_PX
    colour: str = "black"


def with_text(canvas: np.ndarray, title: str, labels: list[Label]) -> np.ndarray:
    """`canvas` (floats in [0, 1]) with the title at its top and each label at its pixel."""
    height, width = canvas.shape[:2]
    fig = Figure(figsize=((width + 0.5) / 100, (height + 0.5) / 100), dpi=100)  # ≥ the canvas
    FigureCanvasAgg(fig)
    fig.figimage(canvas, 0, 0, origin="upper", resize=False)
    points = 72 / 100  # a pixel at the figure's 100 dpi
    fig.text(4 / width, 1 - 3 / height, title, fontsize=FONT_PX * points, va="top", linespacing=1.2)
    for label in labels:
        fig.text(label.x / width, 1 - label.y / height, label.text, fontsize=label.px * points,
                 ha=label.align, va="center", color=label.colour)  # fmt: skip
    return figure_pixels(fig)[:height, :width]  # exactly the canvas: no taller than wide
