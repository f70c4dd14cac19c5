#!/usr/bin/env python3
"""Golden fixtures for the diffusers architectures of `flowgym-images`.

Builds TINY random models with the same block types as the published checkpoints, runs them with
the reference `diffusers` implementation, and writes everything the Rust tests in
`plugins/images/tests/diffusers_*.rs` compare against, under `plugins/images/tests/fixtures/diffusers/`.
Nothing is downloaded: every model is random, with a fixed seed, and every file stays small.

Run with the reference environment (torch 2.13.0, diffusers 0.42.1, safetensors):

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_diffusers_fixtures.py

Outputs (paths relative to `tests/fixtures/diffusers/`):

`cifar-tiny/` -- a `UNet2DModel` with the block types of `google/ddpm-cifar10-32`, saved in that
repository's flat layout: `config.json`, `diffusion_pytorch_model.safetensors`,
`scheduler_config.json` (the published DDPM scheduler config, verbatim).

`io/cifar_forward.safetensors` -- one forward pass of `cifar-tiny`:
    x          f32 [2, 3, 32, 32]   the input sample
    timesteps  f32 [2]              the step indices k given to the UNet
    eps        f32 [2, 3, 32, 32]   `UNet2DModel(x, timesteps).sample`

`io/cifar_sampling.safetensors` -- the base-model sampling path of the Flow Gym host for a
discrete-diffusion scheduler (derived in docs/mathematics.md, sections 1 and 6), run with
`cifar-tiny` on a fixed, stored noise sequence. With `ab = alphas_cumprod` of the scheduler (index 0 the cleanest),
K = len(ab) - 1 = 999, t0 = 0.02, S = 100 steps, dt = (1 - t0) / S and, for j = 0..S-1:

    t_j    = t0 + j * (1 - t0) / S
    k      = floor((1 - t_j) * K + 0.5)            (round half up; no ties occur on this grid)
    ab'    = K * (ab[k-1] - ab[k]),  ab[-1] = 1
    alpha  = sqrt(ab[k]),  beta = sqrt(1 - ab[k])
    alpha' = ab' / (2 alpha),  beta' = -ab' / (2 beta)
    kappa  = alpha' / alpha,  eta = beta * (kappa * beta - beta'),  s = sqrt(2 eta),  g = s^2/2 + eta
    b      = -g / beta
    eps_j  = UNet(x_j, [k, k])                     (the model receives k as a float, not t)
    x_{j+1} = x_j + (x_j * kappa + eps_j * b) * dt + noise_j * (sqrt(dt) * s)

    The scalar coefficients are float64; tensors are float32 and the update is evaluated in exactly
    the order written above. Tensors:
    x0         f32 [2, 3, 32, 32]       x_0 (a draw of N(0, I))
    noise      f16 [100, 2, 3, 32, 32]  noise_j; stored in float16 to keep the file small, and
                                         used as `noise.float()` (the path used those values)
    t          f64 [101]                t_0 .. t_S (t_S = 1)
    k          i64 [100]                k(t_j)
    kappa      f64 [100]                drift coefficient of x
    b          f64 [100]                drift coefficient of eps (-g / beta)
    s          f64 [100]                diffusion coefficient (= sigma_m)
    alpha_bar  f64 [1000]               the scheduler's alphas_cumprod (as float64)
    eps_steps  i64 [11]                 the steps j whose eps is recorded: 0, 10, ..., 90, 99
    eps        f32 [11, 2, 3, 32, 32]   eps_j at those steps
    x_final    f32 [2, 3, 32, 32]       x_S

`io/schedules.safetensors` -- `DDPMScheduler(...).alphas_cumprod` (f32 [1000]) for the beta
schedules `linear` (1e-4, 0.02), `scaled_linear` (0.00085, 0.012) and `squaredcos_cap_v2`, named
after the schedule.

`sd2-unet-tiny/`, `sd15-unet-tiny/` -- `UNet2DConditionModel`s with the block types of
`stabilityai/stable-diffusion-2-base` (linear projections, per-block head counts) and
`stable-diffusion-v1-5` (1x1-convolution projections, one head count), in the `unet/` layout
(`config.json`, `diffusion_pytorch_model.safetensors`).

`io/sd2_unet_forward.safetensors`, `io/sd15_unet_forward.safetensors`:
    x                      f32 [2, 4, 16, 16]
    timesteps              f32 [2]
    encoder_hidden_states  f32 [2, 7, cross_attention_dim]
    out                    f32 [2, 4, 16, 16]
    x_odd, timesteps_odd, encoder_hidden_states_odd, out_odd: the same for a [1, 4, 12, 20]
                           latent, whose size is not a multiple of 8 (upsampling to given sizes)

`vae-tiny/` -- an `AutoencoderKL` with the block types of the Stable Diffusion VAE.
`io/vae.safetensors`:
    z          f32 [2, 4, 4, 4]     latents given to `decode`
    decoded    f32 [2, 3, 32, 32]   `vae.decode(z).sample`
    image      f32 [1, 3, 32, 32]   input of `encode`
    mean       f32 [1, 4, 4, 4]     `vae.encode(image).latent_dist.mean`
    logvar     f32 [1, 4, 4, 4]     `... .logvar` (clamped to [-30, 20] as diffusers does)

`published.json` -- for the published configs of `google/ddpm-cifar10-32` (unet),
`stabilityai/stable-diffusion-2-base` (unet), `stable-diffusion-v1-5` (unet) and their VAE: the
config as published and every parameter name with its shape, as diffusers builds it (on the
meta device, so nothing is allocated). The Rust tests build the full-size architectures from
these configs and check that they ask for exactly these names and shapes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "diffusers"
IO = OUT / "io"

# --- Published configs (verbatim from the Hugging Face repositories) -------------------------

CIFAR_CONFIG = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

CIFAR_SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_small",
}

SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

SD2_BASE_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": SD_DOWN,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": SD_UP,
    "use_linear_projection": True,
}

SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": SD_DOWN,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": SD_UP,
}

SD_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# --- Tiny configs: the same block types, few channels -----------------------------------------

CIFAR_TINY = {
    **{k: v for k, v in CIFAR_CONFIG.items() if not k.startswith("_")},
    "block_out_channels": [8, 16, 16, 16],
    "norm_num_groups": 4,
}

SD2_TINY = {
    **{k: v for k, v in SD2_BASE_UNET_CONFIG.items() if not k.startswith("_")},
    "attention_head_dim": [1, 2, 2, 2],
    "block_out_channels": [8, 16, 16, 16],
    "cross_attention_dim": 24,
    "norm_num_groups": 4,
    "sample_size": 16,
    # Published by SD 2.1 (768); a no-op in float32, accepted by the Rust config.
    "upcast_attention": True,
}

SD15_TINY = {
    **{k: v for k, v in SD15_UNET_CONFIG.items() if not k.startswith("_")},
    "attention_head_dim": 2,
    "block_out_channels": [8, 16, 16, 16],
    "cross_attention_dim": 16,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 16,
}

VAE_TINY = {
    **{k: v for k, v in SD_VAE_CONFIG.items() if not k.startswith("_")},
    "block_out_channels": [8, 16, 16, 16],
    "norm_num_groups": 4,
    "sample_size": 32,
}


def perturb_norms(model: torch.nn.Module) -> None:
    """Random affine parameters for every normalisation layer (torch initialises them to 1 and 0,
    which would hide a swapped weight and bias)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))


def save_model(model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)


def save_io(name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    IO.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, IO / name, metadata=metadata)


def cifar() -> UNet2DModel:
    torch.manual_seed(0)
    model = UNet2DModel(**CIFAR_TINY).eval()
    perturb_norms(model)
    folder = OUT / "cifar-tiny"
    save_model(model, folder)
    (folder / "scheduler_config.json").write_text(json.dumps(CIFAR_SCHEDULER_CONFIG, indent=2) + "\n")

    x = torch.randn(2, 3, 32, 32)
    timesteps = torch.tensor([3.0, 717.0])
    with torch.no_grad():
        eps = model(x, timesteps).sample
    save_io("cifar_forward.safetensors", {"x": x, "timesteps": timesteps, "eps": eps})
    print(f"cifar forward: |eps| max {eps.abs().max():.3f}")
    return model


def k_of(t: float, K: int) -> int:
    v = (1.0 - t) * K
    assert abs(v - math.floor(v) - 0.5) > 1e-6, "a rounding tie on the grid"
    return math.floor(v + 0.5)


def coefficients(ab: list[float], t: float) -> tuple[int, float, float, float]:
    K = len(ab) - 1
    k = k_of(t, K)
    a_bar = ab[k]
    prev = 1.0 if k == 0 else ab[k - 1]
    d = K * (prev - a_bar)
    alpha, beta = math.sqrt(a_bar), math.sqrt(1.0 - a_bar)
    alpha_d, beta_d = d / (2.0 * alpha), -d / (2.0 * beta)
    kappa = alpha_d / alpha
    eta = beta * (kappa * beta - beta_d)
    s = math.sqrt(2.0 * eta)
    g = s * s / 2.0 + eta
    return k, kappa, -g / beta, s


def cifar_sampling(model: UNet2DModel) -> None:
    scheduler = DDPMScheduler(**{k: v for k, v in CIFAR_SCHEDULER_CONFIG.items() if not k.startswith("_")})
    ab = scheduler.alphas_cumprod.double().tolist()
    t0, steps, n = 0.02, 100, 2
    dt = (1.0 - t0) / steps
    torch.manual_seed(1)
    x0 = torch.randn(n, 3, 32, 32)
    noise = torch.randn(steps, n, 3, 32, 32).half()
    recorded = list(range(0, steps, 10)) + [steps - 1]
    ts, ks, kappas, bs, ss, eps_rec = [], [], [], [], [], []
    x = x0.clone()
    with torch.no_grad():
        for j in range(steps):
            t = t0 + j * (1.0 - t0) / steps
            k, kappa, b, s = coefficients(ab, t)
            eps = model(x, torch.full((n,), float(k))).sample
            x = x + (x * kappa + eps * b) * dt + noise[j].float() * (math.sqrt(dt) * s)
            ts.append(t)
            ks.append(k)
            kappas.append(kappa)
            bs.append(b)
            ss.append(s)
            if j in recorded:
                eps_rec.append(eps)
    ts.append(t0 + steps * (1.0 - t0) / steps)
    save_io(
        "cifar_sampling.safetensors",
        {
            "x0": x0,
            "noise": noise,
            "t": torch.tensor(ts, dtype=torch.float64),
            "k": torch.tensor(ks, dtype=torch.int64),
            "kappa": torch.tensor(kappas, dtype=torch.float64),
            "b": torch.tensor(bs, dtype=torch.float64),
            "s": torch.tensor(ss, dtype=torch.float64),
            "alpha_bar": torch.tensor(ab, dtype=torch.float64),
            "eps_steps": torch.tensor(recorded, dtype=torch.int64),
            "eps": torch.stack(eps_rec),
            "x_final": x,
        },
        metadata={
            "t0": str(t0),
            "steps": str(steps),
            "update": "x += (x * kappa + eps * b) * dt + noise.float() * (sqrt(dt) * s)",
        },
    )
    print(f"cifar sampling: k {ks[0]}..{ks[-1]}, |x_final| max {x.abs().max():.3f}")


def schedules() -> None:
    out = {}
    for name, start, end in [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012), ("squaredcos_cap_v2", 1e-4, 0.02)]:
        s = DDPMScheduler(num_train_timesteps=1000, beta_start=start, beta_end=end, beta_schedule=name)
        out[name] = s.alphas_cumprod.clone()
    save_io("schedules.safetensors", out)


def sd_unet(name: str, config: dict, seed: int) -> None:
    torch.manual_seed(seed)
    model = UNet2DConditionModel(**config).eval()
    perturb_norms(model)
    save_model(model, OUT / name)
    cross = config["cross_attention_dim"]
    x = torch.randn(2, 4, 16, 16)
    timesteps = torch.tensor([17.0, 833.0])
    ehs = torch.randn(2, 7, cross)
    x_odd = torch.randn(1, 4, 12, 20)
    t_odd = torch.tensor([401.0])
    ehs_odd = torch.randn(1, 7, cross)
    with torch.no_grad():
        out = model(x, timesteps, ehs).sample
        out_odd = model(x_odd, t_odd, ehs_odd).sample
    save_io(
        f"{name.replace('-tiny', '').replace('-', '_')}_forward.safetensors",
        {
            "x": x,
            "timesteps": timesteps,
            "encoder_hidden_states": ehs,
            "out": out,
            "x_odd": x_odd,
            "timesteps_odd": t_odd,
            "encoder_hidden_states_odd": ehs_odd,
            "out_odd": out_odd,
        },
    )
    print(f"{name}: |out| max {out.abs().max():.3f}, |out_odd| max {out_odd.abs().max():.3f}")


def vae() -> None:
    torch.manual_seed(4)
    model = AutoencoderKL(**VAE_TINY).eval()
    perturb_norms(model)
    save_model(model, OUT / "vae-tiny")
    z = torch.randn(2, 4, 4, 4)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        decoded = model.decode(z).sample
        dist = model.encode(image).latent_dist
    save_io("vae.safetensors", {"z": z, "decoded": decoded, "image": image, "mean": dist.mean, "logvar": dist.logvar})
    print(f"vae: |decoded| max {decoded.abs().max():.3f}")


def published() -> None:
    entries = {}
    for name, cls, config in [
        ("google/ddpm-cifar10-32", UNet2DModel, CIFAR_CONFIG),
        ("stabilityai/stable-diffusion-2-base/unet", UNet2DConditionModel, SD2_BASE_UNET_CONFIG),
        ("stable-diffusion-v1-5/unet", UNet2DConditionModel, SD15_UNET_CONFIG),
        ("stable-diffusion-v1-5/vae", AutoencoderKL, SD_VAE_CONFIG),
    ]:
        with torch.device("meta"):
            model = cls.from_config(config)
        parameters = {k: list(v.shape) for k, v in model.state_dict().items()}
        entries[name] = {"config": config, "parameters": parameters}
    (OUT / "published.json").write_text(json.dumps(entries, indent=1) + "\n")


def main() -> None:
    torch.set_num_threads(1)
    model = cifar()
    cifar_sampling(model)
    schedules()
    sd_unet("sd2-unet-tiny", SD2_TINY, seed=2)
    sd_unet("sd15-unet-tiny", SD15_TINY, seed=3)
    vae()
    published()
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(OUT)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
