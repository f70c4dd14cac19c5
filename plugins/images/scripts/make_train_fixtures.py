#!/usr/bin/env python3
"""Fixtures proving that diffusers loads what `flowgym-host train-base` writes.

Two stages, with the trainer run between them (paths relative to the repository root):

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_train_fixtures.py data
    target/release/flowgym-train base --data plugins/images/tests/fixtures/train/images.safetensors \
        --unet-config plugins/images/tests/fixtures/train/unet.json --steps 6 --batch-size 4 \
        --checkpoint-every 6 --seed 1 --threads 1 --out plugins/images/tests/fixtures/train/model
    rm -r plugins/images/tests/fixtures/train/model/checkpoint
    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_train_fixtures.py reference

`data` writes `images.safetensors` (`images` uint8 [16, 1, 8, 8], random strokes; `labels` int64
[16]) and `unet.json` (a two-level UNet2DModel of 8 and 16 channels). `reference` loads `model/`
(written by train-base) with `UNet2DModel.from_pretrained` and `DDPMScheduler.from_pretrained`
(diffusers 0.42.1) and writes `model_io.safetensors`:

    x          f32 [2, 1, 8, 8]   inputs
    timesteps  f32 [2]            step indices
    out        f32 [2, 1, 8, 8]   `UNet2DModel(x, timesteps).sample`
    alphas_cumprod f32 [1000]     the scheduler's
"""
import json
import os
import sys

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

DIR = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "train")


def data():
    os.makedirs(DIR, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(16, 1, 8, 8, generator=gen) * 255).round().to(torch.uint8)
    labels = torch.arange(16) % 10
    save_file({"images": images, "labels": labels}, os.path.join(DIR, "images.safetensors"))
    unet = {
        "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4,
        "attention_head_dim": 8,
    }
    with open(os.path.join(DIR, "unet.json"), "w") as f:
        json.dump(unet, f, indent=2)
        f.write("\n")


def reference():
    folder = os.path.join(DIR, "model")
    unet = UNet2DModel.from_pretrained(folder).eval()
    scheduler = DDPMScheduler.from_pretrained(folder)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 8, 8, generator=gen)
    t = torch.tensor([5.0, 700.0])
    with torch.no_grad():
        out = unet(x, t).sample
    save_file(
        {"x": x, "timesteps": t, "out": out.contiguous(),
         "alphas_cumprod": scheduler.alphas_cumprod.float().contiguous()},
        os.path.join(DIR, "model_io.safetensors"),
    )


if __name__ == "__main__":
    {"data": data, "reference": reference}[sys.argv[1]]()
