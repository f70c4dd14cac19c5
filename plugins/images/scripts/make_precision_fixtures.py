#!/usr/bin/env python3
"""Golden fixtures of the image models in half precision (`dtype` float16 and bfloat16).

Loads the tiny random models already committed under `plugins/images/tests/fixtures/` (written
by `make_ddpm_fixtures.py`, `make_sd_fixtures.py` and `make_clip_fixtures.py`), converts them
with diffusers' / transformers' own `torch_dtype` loading, runs them on the inputs of their
float32 fixtures and saves the outputs for `plugins/images/tests/precision.rs`. PyTorch 2.13's
CPU kernels run every operation involved in both formats. Nothing is downloaded. Run with the
reference environment (torch 2.13.0, diffusers 0.42.1, transformers 5.24.0):

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_precision_fixtures.py

`tests/fixtures/precision/cases.safetensors`, every tensor stored as float32 (exactly the half
values), for each `dt` in `float16`, `bfloat16`:
    ddpm_gray16.{dt}.out    [2, 1, 16, 16]  `UNet2DModel.from_pretrained(ddpm/gray16,
                                             torch_dtype=dt)(x.to(dt), timesteps).sample` with `x`
                                             and `timesteps` of `ddpm/gray16/io.safetensors`
    sd2.{dt}.prompt_embeds  [3, 77, 24]     `StableDiffusionPipeline.from_pretrained(sd/sd2,
                                             torch_dtype=dt).encode_prompt(prompts)` (the prompts
                                             of `sd/sd2_io.safetensors`)
    sd2.{dt}.eps            [3, 4, 6, 8]    `pipe.unet(latents.to(dt), timestep,
                                             prompt_embeds).sample` (no guidance), with the
                                             half-precision `prompt_embeds` above
    sd2.{dt}.images         [3, 3, 48, 64]  `pipe.vae.decode(decode_latents.to(dt) /
                                             scaling_factor)` then `(x / 2 + 0.5).clamp(0, 1)`,
                                             the VAE in `dt` (in float16 the Rust side runs it so
                                             only for a config without `force_upcast`)
    aesthetic.{dt}.mlp      [3]             the MLP head's score of `clip/aesthetic`'s images: the
                                             CLIP vision tower (`CLIPModel.from_pretrained(...,
                                             torch_dtype=dt)`) on the float32 preprocessed pixels
                                             cast to `dt`, its image embedding cast to float32,
                                             L2-normalised, and the head in float32
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DModel
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# CLIP's normalisation (make_clip_fixtures.py).
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def preprocess(images, size):
    """make_clip_fixtures.py's `preprocess` (transformers' CLIPImageProcessor on float images)."""
    _, _, h, w = images.shape
    short, long = min(h, w), max(h, w)
    if short != size:
        new_long = int(size * long / short)
        new_h, new_w = (size, new_long) if h <= w else (new_long, size)
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    _, _, h, w = images.shape
    top, left = int((h - size) / 2.0), int((w - size) / 2.0)
    images = images[:, :, top : top + size, left : left + size]
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class MlpHead(torch.nn.Module):
    """make_clip_fixtures.py's MLP head (improved-aesthetic-predictor's layout, small widths)."""

    def __init__(self, dim, widths=(40, 24, 12, 6)):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, widths[0]),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(widths[0], widths[1]),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(widths[1], widths[2]),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(widths[2], widths[3]),
            torch.nn.Linear(widths[3], 1),
        )

    def forward(self, x):
        return self.layers(x)


def ddpm(cases, name, dt):
    folder = FIXTURES / "ddpm" / "gray16"
    io = load_file(str(folder / "io.safetensors"))
    unet = UNet2DModel.from_pretrained(str(folder), torch_dtype=dt).eval()
    cases[f"ddpm_gray16.{name}.out"] = unet(io["x"].to(dt), io["timesteps"]).sample.float()


def sd2(cases, name, dt):
    from safetensors import safe_open

    path = FIXTURES / "sd" / "sd2_io.safetensors"
    io = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
    pipe = StableDiffusionPipeline.from_pretrained(
        str(FIXTURES / "sd" / "sd2"), torch_dtype=dt, safety_checker=None, requires_safety_checker=False
    )
    embeds, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    cases[f"sd2.{name}.prompt_embeds"] = embeds.float()
    eps = pipe.unet(io["latents"].to(dt), io["timestep"], encoder_hidden_states=embeds).sample
    cases[f"sd2.{name}.eps"] = eps.float()
    # The VAE in the format itself: what a config without `force_upcast` gives in float16.
    z = io["decode_latents"].to(dt) / pipe.vae.config.scaling_factor
    images = (pipe.vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
    cases[f"sd2.{name}.images"] = images.float()


def aesthetic(cases, name, dt):
    folder = FIXTURES / "clip" / "aesthetic"
    clip = CLIPModel.from_pretrained(str(folder / "clip"), torch_dtype=dt).eval()
    head = MlpHead(24).eval()
    head.load_state_dict(load_file(str(folder / "head_mlp.safetensors")))
    images = load_file(str(folder / "aesthetic_cases.safetensors"))["images"]
    pixels = preprocess(images.clamp(0, 1), 32).to(dt)
    pooled = clip.vision_model(pixel_values=pixels).pooler_output
    e = clip.visual_projection(pooled).float()
    e = e / torch.linalg.vector_norm(e, dim=-1, keepdim=True)
    cases[f"aesthetic.{name}.mlp"] = head(e).squeeze(1)


def main():
    cases = {}
    with torch.no_grad():
        for name, dt in DTYPES.items():
            ddpm(cases, name, dt)
            sd2(cases, name, dt)
            aesthetic(cases, name, dt)
    out = FIXTURES / "precision"
    out.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in cases.items()}, str(out / "cases.safetensors"))
    for k, v in cases.items():
        print(k, list(v.shape), f"max |v| {v.abs().max():.4g}")


if __name__ == "__main__":
    main()
