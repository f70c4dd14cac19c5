#!/usr/bin/env python3
"""Writes the JPEG fixtures of `images/compression` and `images/incompression`.

Run from anywhere with the Python reference environment (Pillow, numpy):

    ~/.cache/flowgym/pyref/bin/python plugins/image-rewards/scripts/make_jpeg_fixtures.py

It writes into `plugins/image-rewards/tests/fixtures/`:

- `<name>.bin`: one image, `[3, H, W]` (channels first, like the reward's input), raw
  little-endian, either float32 in [0, 1] (`"dtype": "f32"`, values off the 1/255 grid, so the
  rounding step matters) or uint8 (`"dtype": "u8"`; the image is `u8 / 255` as float32).
- `jpeg_sizes.json`: for each image, the byte size of Pillow's JPEG at qualities 30, 85 and 95,
  and a table of float32 values with the uint8 numpy rounds them to.

The reference pipeline, which the Rust reward mirrors step by step:

    x: float32 [3, H, W] in [0, 1]
    u8 = (x * 255).round().clip(0, 255).astype(uint8)   # float32 product, round half to even
    PIL.Image.fromarray(u8.transpose(1, 2, 0)).save(buf, format="JPEG", quality=q, optimize=True)
    bits per pixel = len(buf) * 8 / (H * W)
"""

import io
import json
import pathlib

import numpy as np
import PIL
from PIL import Image, features

QUALITIES = (30, 85, 95)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def to_uint8(x: np.ndarray) -> np.ndarray:
    """The reference rounding: float32 product, numpy round (half to even), clip."""
    assert x.dtype == np.float32
    return (x * np.float32(255)).round().clip(0, 255).astype(np.uint8)


def jpeg_bytes(x: np.ndarray, quality: int) -> int:
    """Size in bytes of Pillow's JPEG of a float32 [3, H, W] image."""
    hwc = np.ascontiguousarray(to_uint8(x).transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, format="JPEG", quality=quality, optimize=True)
    return len(buf.getvalue())


def grid(h: int, w: int):
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    return yy, xx


def gradient(h, w, rng):
    yy, xx = grid(h, w)
    return np.stack([xx, yy, 0.5 * (1 - xx) + 0.5 * yy])


def noise(h, w, rng):
    return rng.uniform(0, 1, size=(3, h, w))


def shapes(h, w, rng):
    yy, xx = grid(h, w)
    img = np.zeros((3, h, w))
    img[:] = np.array([0.1, 0.2, 0.6])[:, None, None]
    disk = (xx - 0.35) ** 2 + (yy - 0.4) ** 2 < 0.07
    img[:, disk] = np.array([0.95, 0.8, 0.1])[:, None]
    square = (np.abs(xx - 0.7) < 0.18) & (np.abs(yy - 0.7) < 0.18)
    img[:, square] = np.array([0.9, 0.1, 0.15])[:, None]
    stripes = (yy < 0.2) & ((np.floor(xx * w / 2) % 2) == 0)
    img[:, stripes] = 1.0
    return img


def photo(h, w, rng):
    """A photo-like mixture: smooth lighting, a horizon, soft objects, texture and sensor noise."""
    yy, xx = grid(h, w)
    sky = np.stack([0.45 + 0.2 * yy, 0.6 + 0.2 * yy, 0.9 - 0.1 * yy])
    ground = np.stack([0.35 + 0.1 * xx, 0.3 + 0.15 * xx, 0.15 + 0.0 * xx])
    horizon = 0.55 + 0.05 * np.sin(6 * xx)
    img = np.where(yy < horizon, sky, ground)
    blob = np.exp(-((xx - 0.3) ** 2 + (yy - 0.7) ** 2) / 0.01)
    img = img * (1 - 0.6 * blob) + 0.6 * blob * np.array([0.8, 0.2, 0.2])[:, None, None]
    texture = 0.06 * np.sin(40 * xx + 25 * yy) * (yy > horizon)
    img = img + texture + rng.normal(0, 0.03, size=(3, h, w))
    return img


def flat(h, w, rng):
    """One colour: what the compression reward drives samples towards; the file is nearly all
    headers, so this checks that they are counted like Pillow's."""
    return np.ones((3, h, w)) * np.array([0.3, 0.55, 0.8])[:, None, None]


KINDS = {"gradient": gradient, "noise": noise, "shapes": shapes, "photo": photo, "flat": flat}
# (height, width, storage dtype): float32 images exercise the rounding, uint8 keep files small;
# 30 x 45 is not a multiple of the 16 x 16 MCU, so edge padding is exercised too.
SIZES = [(32, 32, "f32"), (64, 64, "u8")]
EXTRA = [("photo", 30, 45, "u8"), ("shapes", 30, 45, "f32"), ("flat", 32, 32, "u8")]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240607)
    plan = [(kind, h, w, dt) for (h, w, dt) in SIZES for kind in KINDS if kind != "flat"] + EXTRA
    images = []
    for kind, h, w, dtype in plan:
        x = np.clip(KINDS[kind](h, w, rng), 0, 1).astype(np.float32)
        name = f"{kind}_{h}x{w}"
        if dtype == "u8":
            stored = to_uint8(x)
            # What the Rust test feeds the reward: u8 / 255 in float32.
            x = stored.astype(np.float32) / np.float32(255)
            assert np.array_equal(to_uint8(x), stored)
        else:
            stored = x
        path = OUT / f"{name}.bin"
        path.write_bytes(np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes())
        sizes = {str(q): jpeg_bytes(x, q) for q in QUALITIES}
        images.append({
            "name": name,
            "file": path.name,
            "dtype": dtype,
            "height": h,
            "width": w,
            "jpeg_bytes": sizes,
        })
        print(name, dtype, sizes)

    # Rounding table: ties and near-ties of the 1/255 grid, the ends, and random values.
    k = np.arange(0, 255, 17, dtype=np.float32)
    probes = np.concatenate([
        (k + np.float32(0.5)) / np.float32(255),
        np.nextafter((k + np.float32(0.5)) / np.float32(255), np.float32(0)),
        np.nextafter((k + np.float32(0.5)) / np.float32(255), np.float32(1)),
        np.array([0.0, 1.0, 0.5 / 255, 1.5 / 255, 254.5 / 255, 0.5], dtype=np.float32),
        rng.uniform(0, 1, size=16).astype(np.float32),
    ]).astype(np.float32)
    probes = probes[(probes >= 0) & (probes <= 1)]
    rounding = {
        # Exact float32 values, as their bit patterns, so JSON cannot change them.
        "x_bits": [int(v) for v in probes.view(np.uint32)],
        "u8": [int(v) for v in to_uint8(probes)],
    }

    doc = {
        "generator": "plugins/image-rewards/scripts/make_jpeg_fixtures.py",
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "numpy": np.__version__,
        "pipeline": "u8 = (x * 255).round().clip(0, 255) (float32, half to even); "
        "Image.fromarray(u8 HWC).save(JPEG, quality=q, optimize=True)",
        "layout": "[3, H, W] channels first, little-endian",
        "qualities": list(QUALITIES),
        "images": images,
        "rounding": rounding,
    }
    (OUT / "jpeg_sizes.json").write_text(json.dumps(doc, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(images)} images to {OUT} ({total} bytes in all)")


if __name__ == "__main__":
    main()
