"""Top patches (Zeiler & Fergus 2014): the validation image regions that make a channel fire most.

For each conv block and each of its first `max_channels` channels: every validation image's
strongest unit of that channel (the maximum over positions), the `k` images where it is highest,
and from each the input patch that unit sees, cut at its exact receptive field from
`receptive_fields`. Unit (i, j) with field size r, stride S and padding P sees input rows
i·S − P … i·S − P + r − 1 (columns likewise); parts outside the image are NaN (OUTSIDE), drawn
in a colour no image pixel has.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnexp.analysis.health import block_outputs, conv_blocks
from cnnexp.analysis.images import minmax
from cnnexp.analysis.receptive_field import RFRow, field_of, receptive_fields

OUTSIDE = float("nan")  # where a field reaches past the image border


def block_fields(net: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, RFRow]:
    """The receptive field at each conv block's output, keyed like `conv_blocks`."""
    rows = receptive_fields(net, input_shape)
    names = {id(m): name for name, m in net.named_modules()}
    fields = {}
    for key, block in conv_blocks(net).items():
        row = field_of(rows, names[id(block)])
        if row is not None and not row.covers_input:
            fields[key] = row
    return fields


def top_patches(
    acts: torch.Tensor, images: torch.Tensor, field: RFRow, k: int, max_channels: int
) -> list[list[torch.Tensor]]:
    """A row per channel: its `k` strongest images' patches (C×r×r each, values of `images`
    min-max scaled to [0, 1] per image, OUTSIDE past its border), strongest first."""
    n, width = acts.shape[0], acts.shape[-1]
    scaled = torch.stack([minmax(image) for image in images.float().cpu()])
    (rh, rw), (sh, sw), (ph, pw) = field.size_hw, field.stride_hw, field.padding_hw
    rows = []
    for c in range(min(max_channels, acts.shape[1])):
        best = acts[:, c].reshape(n, -1).float()
        strength, where = best.max(dim=1)
        order = strength.argsort(descending=True)[:k].tolist()
        patches = []
        for i in order:
            y, x = divmod(int(where[i]), width)
            patches.append(_crop(scaled[i], y * sh - ph, x * sw - pw, rh, rw))
        rows.append(patches)
    return rows


def _crop(image: torch.Tensor, top: int, left: int, rh: int, rw: int) -> torch.Tensor:
    """The rh×rw window at (top, left) of a C×H×W image, OUTSIDE where it leaves the image."""
    patch = torch.full((image.shape[0], rh, rw), OUTSIDE)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + rh, image.shape[1]), min(left + rw, image.shape[2])
    if y1 > y0 and x1 > x0:
        patch[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[:, y0:y1, x0:x1]
    return patch


def all_top_patches(
    net: nn.Module, images: torch.Tensor, fields: dict[str, RFRow], k: int, max_channels: int
) -> dict[str, list[list[torch.Tensor]]]:
    """{block: rows of patches} for every conv block with a spatial field."""
    outputs = block_outputs(net, images)
    return {
        name: top_patches(acts.cpu(), images, fields[name], k, max_channels)
        for name, acts in outputs.items()
        if name in fields
    }
