#!/usr/bin/env python3
"""Golden fixtures of tiled VAE decoding (`plugins/images/src/models/vae_tiling.rs`, the
`vae_tiling` argument of `images/sd2` and `images/sd1.5`).

Builds a TINY random `AutoencoderKL` (four levels, so latents are up-sampled 8 times, as in
Stable Diffusion; `sample_size` 32, so diffusers' default tiles are 32 pixels, 4 latents, and
overlap by a quarter), saves it in the published folder layout and records what diffusers'
`AutoencoderKL.decode` computes with `enable_tiling()` (which goes through `tiled_decode`,
`blend_v` and `blend_h`), for the Rust tests in `plugins/images/tests/memory_modes.rs`. Nothing
is downloaded: the model is random with a fixed seed, its normalisations perturbed.

Run with the reference environment (torch 2.13.0, diffusers 0.42.1, safetensors):

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_vae_tiling_fixtures.py

Outputs, under `plugins/images/tests/fixtures/vae_tiling/`:

`vae/` -- `config.json` and `diffusion_pytorch_model.safetensors`.
`io.safetensors`:
    latents_a   f32 [2, 4, 7, 10]    latents larger than a tile (rows 0, 3, 6; columns 0, 3, 6, 9)
    tiled_a     f32 [2, 3, 56, 80]   `vae.enable_tiling(); vae.decode(latents_a).sample`, the
                                     default tiles (`tile_sample_min_size` = 32)
    whole_a     f32 [2, 3, 56, 80]   `vae.disable_tiling(); vae.decode(latents_a).sample`
    latents_b   f32 [1, 4, 13, 9]    taller than wide
    tiled_b     f32 [1, 3, 104, 72]  tiled with `tile_sample_min_size` = 64 and
                                     `tile_latent_min_size` = 8 (as a user sets them)
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vae_tiling"

CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[4, 8, 8, 8],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=2,
    sample_size=32,
)


def perturb_norms(model: torch.nn.Module) -> None:
    """Random affine parameters for every normalisation layer (torch starts them at 1 and 0)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))


def main() -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(**CONFIG)
    perturb_norms(vae)
    vae.eval()
    vae.save_pretrained(OUT / "vae", safe_serialization=True)
    vae = AutoencoderKL.from_pretrained(OUT / "vae")
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (32, 4)
    latents_a = torch.randn(2, 4, 7, 10)
    latents_b = torch.randn(1, 4, 13, 9)
    with torch.no_grad():
        vae.enable_tiling()
        tiled_a = vae.decode(latents_a).sample
        vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 8
        tiled_b = vae.decode(latents_b).sample
        vae.disable_tiling()
        whole_a = vae.decode(latents_a).sample
    tensors = dict(
        latents_a=latents_a,
        tiled_a=tiled_a,
        whole_a=whole_a,
        latents_b=latents_b,
        tiled_b=tiled_b,
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "io.safetensors"))
    print({k: list(v.shape) for k, v in tensors.items()})
    print("tiled vs whole, max abs difference:", (tiled_a - whole_a).abs().max().item())


if __name__ == "__main__":
    main()
