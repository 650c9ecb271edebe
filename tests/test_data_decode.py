"""How image files become uint8 rows (cnnexp/data/folder.py's rule), checked against a reference
written here from the pixels the test itself drew: 16-bit keeps its high byte, a palette gives its
colours, alpha is dropped, colour to grey is ITU-R 601-2 luma, grey to colour repeats. The folder
cache, streamed or in memory, and task=predict read every file alike; a damaged cache is decoded
again, never read shifted."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cnnexp import data
from cnnexp.data.images import RowFile
from cnnexp.errors import ConfigError
from cnnexp.evaluate import images as predict_inputs
from tests.test_data import compose_data

SIZE = 8  # data.image_size of every folder here
# (kind, file suffix): every kind in each format that stores it losslessly; the 16-bit colour
# kinds are written by OpenCV (PIL has no 16-bit colour mode to write them from).
FILES = [
    *[(kind, "png") for kind in ("1", "L", "LA", "P", "P+tRNS", "RGB", "RGBA", "I;16")],
    *[(kind, "png") for kind in ("RGB;16", "RGBA;16")],
    *[(kind, "tif") for kind in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I")],
    *[(kind, "bmp") for kind in ("1", "L", "P", "RGB")],
    *[(kind, "webp") for kind in ("RGB", "RGBA")],
]
CORRUPT = ["empty", "not an image", "cut inside its pixel data"]


@dataclass(frozen=True)
class Drawn:
    """One image file to write: its kind, format, height and width, and the seed of its pixels."""

    kind: str
    suffix: str
    height: int
    width: int
    seed: int


def write_image(file: Path, drawn: Drawn) -> np.ndarray:
    """Write `drawn` to `file`; returns the uint8 H×W×(1 or 3) pixels the rule makes of it."""
    rng = np.random.default_rng(drawn.seed)
    shape = (drawn.height, drawn.width)
    kind = drawn.kind
    if kind in ("RGB;16", "RGBA;16"):  # 16-bit colour: OpenCV writes B, G, R(, A)
        samples = rng.integers(0, 1 << 16, (*shape, 3 if kind == "RGB;16" else 4), np.uint16)
        order = [2, 1, 0, 3][: samples.shape[2]]
        cv2.imwrite(str(file), samples[..., order])
        return (samples[..., :3] >> 8).astype(np.uint8)
    if kind in ("I;16", "I"):  # I: 32-bit integers, here within 0..65535
        samples = rng.integers(0, 1 << 16, shape, np.uint16 if kind == "I;16" else np.int32)
        Image.fromarray(samples).save(file)
        return (samples >> 8).astype(np.uint8)[..., None]
    if kind == "1":
        bits = rng.integers(0, 2, shape).astype(bool)
        Image.fromarray(bits).save(file)
        return np.where(bits, 255, 0).astype(np.uint8)[..., None]
    if kind.startswith("P"):
        return write_palette_image(file, rng, shape, transparent=kind == "P+tRNS")
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[kind]
    samples = rng.integers(0, 256, (*shape, channels), np.uint8)
    bands = [Image.fromarray(np.ascontiguousarray(samples[..., c])) for c in range(channels)]
    # WebP: lossless, and `exact` keeps the colour under transparent pixels
    exact = {"lossless": True, "exact": True} if file.suffix == ".webp" else {}
    Image.merge(kind, bands).save(file, **exact)
    return samples[..., : 1 if channels <= 2 else 3]  # alpha dropped


def write_palette_image(
    file: Path, rng: np.random.Generator, shape: tuple[int, int], transparent: bool
) -> np.ndarray:
    """A palette image (with a tRNS alpha per entry when `transparent`): its palette's colours."""
    palette = rng.integers(0, 256, (256, 3), np.uint8)
    index = rng.integers(0, 256, shape, np.uint8)
    image = Image.fromarray(index)
    image.putpalette(palette.tobytes())  # L with a palette: mode P
    alpha = {"transparency": rng.integers(0, 256, 256, np.uint8).tobytes()} if transparent else {}
    image.save(file, **alpha)
    return palette[index]


def as_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """H×W×(1 or 3) uint8 as `channels`: grey repeated, or colour as (19595 R + 38470 G +
    7471 B + 2^15) >> 16, ITU-R 601-2 luma in 16-bit fixed point."""
    if pixels.shape[2] == channels:
        return pixels
    if channels == 3:
        return pixels.repeat(3, axis=2)
    r, g, b = (pixels[..., c].astype(np.int64) for c in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + (1 << 15)) >> 16).astype(np.uint8)[..., None]


def reference(pixels: np.ndarray, channels: int) -> torch.Tensor:
    """The expected row: `pixels` in `channels`, resized to SIZE² as torchvision resizes uint8."""
    image = torch.from_numpy(np.ascontiguousarray(as_channels(pixels, channels))).permute(2, 0, 1)
    if image.shape[1:] != (SIZE, SIZE):
        image = TF.resize(image, [SIZE, SIZE], antialias=True)
    return image


def corrupt(file: Path, how: str, rng: np.random.Generator) -> None:
    """Make `file` unreadable: empty, random bytes, or a PNG cut inside its IDAT chunk's data."""
    if how == "empty":
        file.write_bytes(b"")
    elif how == "not an image":
        file.write_bytes(rng.integers(0, 256, 200, np.uint8).tobytes())
    else:
        Image.fromarray(rng.integers(0, 256, (9, 9, 3), np.uint8)).save(file)
        png = file.read_bytes()
        start = png.index(b"IDAT") + 4
        length = int.from_bytes(png[start - 8 : start - 4], "big")
        file.write_bytes(png[: start + length // 2])


def write_folder(root: Path, drawn: list[Drawn]) -> dict[int, torch.Tensor]:
    """Image i in class folder c{i % 2} as <i>.<suffix>; their pixels by the rule, in the order
    the folder lists them (class, then name), for channels 1 and 3: [channels][row]."""
    expected = {}
    for i, image in enumerate(drawn):
        file = root / f"c{i % 2}" / f"{i:02d}.{image.suffix}"
        file.parent.mkdir(parents=True, exist_ok=True)
        expected[(i % 2, i)] = write_image(file, image)
    listed = [expected[key] for key in sorted(expected)]
    return {c: torch.stack([reference(p, c) for p in listed]) for c in (1, 3)}


def folder_cfg(folder: Path, out: Path, channels: int, *overrides: str):
    return compose_data(
        "image_folder",
        out,
        f"data.path={folder}",
        f"data.image_size={SIZE}",
        f"data.channels={channels}",
        "data.num_workers=0",
        "data.batch_size=3",
        "data.val_fraction=0.25",
        "data.test_fraction=0.25",
        *overrides,
    )


def batches(dm: data.TensorDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    L.seed_everything(3)
    return [*dm.train_dataloader(), *dm.val_dataloader(), *dm.test_dataloader()]


def rows_match(dm: data.TensorDataModule, expected: torch.Tensor) -> bool:
    """Every split's rows are the expected rows at their positions in the folder's listing."""
    return all(torch.equal(x[:], expected[x.positions]) for x, _ in (dm.train, dm.val, dm.test))


drawn_images = st.builds(
    lambda file, size, seed: Drawn(*file, *size, seed),
    st.sampled_from(FILES),
    st.one_of(st.just((SIZE, SIZE)), st.tuples(st.integers(1, 20), st.integers(1, 20))),
    st.integers(0, 2**32 - 1),
)


@pytest.mark.slow  # 60 generated folders, each decoded three ways
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drawn=st.lists(drawn_images, min_size=6, max_size=8),
    channels=st.sampled_from([1, 3]),
    broken=st.one_of(st.none(), st.sampled_from(CORRUPT)),
)
def test_streamed_and_in_memory_batches_are_the_reference_decode(
    drawn: list[Drawn], channels: int, broken: str | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "images", Path(tmp) / "out"
        expected = write_folder(folder, drawn)[channels]
        cfg = folder_cfg(folder, out, channels, "data.in_memory=true")
        if broken is not None:
            bad = folder / "c1" / "bad.png"
            corrupt(bad, broken, np.random.default_rng(len(drawn)))
            for in_memory in (True, False):
                cfg.in_memory = in_memory
                with pytest.raises(ConfigError) as caught:
                    data.build(cfg)
                text = str(caught.value)
                assert text.startswith(f"data.path: cannot read an image under {folder} ({bad}: ")
                assert "\n" not in text
            return
        held = data.build(cfg)
        cfg.in_memory = False
        streamed = data.build(cfg)
        assert held.in_memory and not streamed.in_memory
        assert rows_match(held, expected) and rows_match(streamed, expected)
        for (x1, y1), (x2, y2) in zip(batches(held), batches(streamed), strict=True):
            assert x2.dtype == torch.uint8 and torch.equal(x1, x2) and torch.equal(y1, y2)


def write_grey_folder(folder: Path, kind: str) -> torch.Tensor:
    """Six grey PNGs of SIZE² in two classes; the rows the rule makes of them (1×S×S)."""
    return write_folder(folder, [Drawn(kind, "png", SIZE, SIZE, seed) for seed in range(6)])[1]


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_16_bit_folder_gives_the_high_byte_of_every_pixel(in_memory: bool, tmp_path) -> None:
    """Was: uint16 rows written into the uint8 cache at 2 bytes a pixel; streamed, every image
    after the first read shifted (and the run FINISHED); in memory, a traceback."""
    expected = write_grey_folder(tmp_path / "images", "I;16")
    cfg = folder_cfg(tmp_path / "images", tmp_path, 1, f"data.in_memory={in_memory}")
    dm = data.build(cfg)
    assert dm.in_memory is in_memory and rows_match(dm, expected)
    assert expected.float().std() > 60  # noise over 0..255: a shifted or clipped row would differ


def cut_meta(cache: Path) -> None:
    meta = cache / "meta.json"
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])


def cut_rows(cache: Path) -> None:
    rows = cache / "images.u8"
    rows.write_bytes(rows.read_bytes()[: rows.stat().st_size // 2])


def doubled_rows(cache: Path) -> None:  # 2 bytes a pixel, as CACHE_FORMAT 1 wrote 16-bit files
    rows = cache / "images.u8"
    rows.write_bytes(np.frombuffer(rows.read_bytes(), np.uint8).astype(np.uint16).tobytes())


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (cut_meta, "its meta.json does not parse: "),
        (cut_rows, "images.u8 holds 192 bytes, not 6 rows of 64"),
        (doubled_rows, "images.u8 holds 768 bytes, not 6 rows of 64"),
    ],
)
def test_a_damaged_cache_is_decoded_again_and_says_why(
    damage, why: str, in_memory: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = write_grey_folder(tmp_path / "images", "L")  # 8-bit: only the damage is new
    cfg = folder_cfg(tmp_path / "images", tmp_path, 1, f"data.in_memory={in_memory}")
    data.build(cfg)
    damage(next((tmp_path / "data" / "cache").iterdir()))
    cfg.split_seed += 1  # another split: this process's data cache does not answer for it
    caplog.clear()  # what the first build said, where the root logger lets INFO through
    with caplog.at_level(logging.INFO, logger="cnnexp.data.folder"):
        dm = data.build(cfg)
    [line] = [r.getMessage() for r in caplog.records if r.name == "cnnexp.data.folder"]
    assert line.startswith("data image_folder: decoded 6 images into cache") and f"({why}" in line
    assert rows_match(dm, expected)


def test_a_row_file_of_the_wrong_size_is_refused_not_read_shifted(tmp_path: Path) -> None:
    rows = RowFile(tmp_path / "images.u8", 4, (1, 2, 2))
    rows.path.write_bytes(bytes(range(16)))
    assert rows.size_problem() is None
    assert rows.read(np.array([3])).flatten().tolist() == [12, 13, 14, 15]
    for size in (8, 32):
        rows.path.write_bytes(bytes(size))
        assert rows.size_problem() == f"images.u8 holds {size} bytes, not 4 rows of 4"
        for read in (rows.load, lambda: rows.read(np.array([0]))):
            with pytest.raises(OSError, match=f"images.u8 holds {size} bytes, not 4 rows of 4"):
                read()


@pytest.mark.parametrize("channels", [1, 3])
def test_predict_reads_a_file_as_the_folder_cache_does(channels: int, tmp_path: Path) -> None:
    kinds = ["I;16", "P", "P+tRNS", "RGBA;16"]  # 16-bit grey, palettes, 16-bit colour + alpha
    drawn = [Drawn(kind, "png", 5 + i, SIZE + i % 2, i) for i, kind in enumerate(kinds * 2)]
    expected = write_folder(tmp_path / "images", drawn)[channels]
    dm = data.build(folder_cfg(tmp_path / "images", tmp_path, channels))
    assert rows_match(dm, expected)
    files = sorted((tmp_path / "images").rglob("*.png"))  # the folder's order: class, name
    facts = {"input_shape": (channels, SIZE, SIZE), "mean": [0.0] * channels}
    inputs = predict_inputs(files, facts | {"std": [1.0] * channels})  # pixels / 255
    assert torch.equal((inputs * 255).round().to(torch.uint8), expected)


@pytest.mark.parametrize(
    ("pixels", "why"),
    [
        (np.array([[0.0, 0.5]], np.float32), "32-bit float pixels, which have no defined scale"),
        (np.array([[-1, 7]], np.int32), "32-bit integer pixels -1..7, outside the 16-bit 0..6"),
        (np.array([[0, 70000]], np.int32), "32-bit integer pixels 0..70000, outside the 16-bi"),
    ],
)
def test_pixels_no_rule_maps_to_8_bits_are_refused_in_one_line(
    pixels: np.ndarray, why: str, tmp_path: Path
) -> None:
    write_folder(tmp_path / "images", [Drawn("L", "png", SIZE, SIZE, i) for i in range(6)])
    odd = tmp_path / "images" / "c0" / "odd.tif"
    Image.fromarray(pixels).save(odd)
    with pytest.raises(ConfigError) as caught:
        data.build(folder_cfg(tmp_path / "images", tmp_path, 3))
    text = str(caught.value)
    folder = tmp_path / "images"
    assert text.startswith(f"data.path: cannot read an image under {folder} ({odd}: {why}")
    assert "\n" not in text
