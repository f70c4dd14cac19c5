#!/usr/bin/env python3
"""Golden fixtures for the diffusers architectures of `flowgym-images`.

Builds TINY random models with the same block types as the published checkpoints, runs them with
the reference `diffusers` implementation, and writes everything the Rust tests in
`plugins/images/tests/diffusers_*.rs` compare against, under `plugins/images/tests/fixtures/diffusers/`.
Nothing is downloaded: every model is random, with a fixed seed, and every file stays small.

Run with the reference environment (torch 2.13.0, diffusers 0.42.1, safetensors):

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_diffusers_fixtures.py

(made once with `python3 -m venv ~/.cache/flowgym/pyref` and `~/.cache/flowgym/pyref/bin/pip
install torch==2.13.0 diffusers==0.42.1 safetensors numpy`: the PyPI torch wheel is the one
`cargo xtask` takes libtorch from, and `import torch` loads its CUDA dependencies even on CPU).
The weights come out bit for bit the same on any machine; network outputs may move in the last
bits with the CPU and thread count.

Outputs (paths relative to `tests/fixtures/diffusers/`):

`cifar-tiny/` -- a `UNet2DModel` with the block types of `google/ddpm-cifar10-32`, saved in that
repository's flat layout: `config.json`, `diffusion_pytorch_model.safetensors`,
`scheduler_config.json` (the published DDPM scheduler config, verbatim).

`io/cifar_forward.safetensors` -- one forward pass of `cifar-tiny`:
    x          f32 [2, 3, 32, 32]   the input sample
    timesteps  f32 [2]              the step indices k given to the UNet
    eps        f32 [2, 3, 32, 32]   `UNet2DModel(x, timesteps).sample`

`io/cifar_sampling.safetensors` -- the base-model sampling path of the Flow Gym host
(`flowgym_host::sde::sample`: memoryless SDE, K = 100 steps, t0 = 0.02, one chunk, no control)
for `cifar-tiny`, as committed, written out from the mathematics of docs/mathematics.md
(sections 1, 3 and 6, and the endpoint estimate of section 2) rather than from the host's code,
with the UNet evaluated by diffusers and the random numbers drawn as the host draws them.

    Schedule (section 1). ab = the scheduler's alphas_cumprod (float32, as float64), clipped to
    [2^-24, 1 - 2^-24]; M = len(ab) - 1 = 999. At time t: m(t) = round((1 - t) M) (half away
    from zero; no ties occur on this grid), alpha = sqrt(ab[m]), beta = sqrt(1 - ab[m]),
    ab' = M (ab[m-1] - ab[m]) with ab[-1] = 1, alpha' = ab' / (2 alpha), beta' = -ab' / (2 beta).

    Drift and noise (section 3, memoryless s = sigma_m, epsilon model):
    kappa = alpha' / alpha, eta = beta (kappa beta - beta'), s = sqrt(2 eta), g = s^2/2 + eta;
    the drift is kappa x - (g / beta) eps.

    Path (section 6). t_k = t0 + (1 - t0) k / K, dt_k = t_{k+1} - t_k. The host seeds libtorch's
    generator with the chunk seed c = seed * 0x9E3779B97F4A7C15 mod 2^64 (chunk 0), and the
    plugin draws y_0 = randn(n, 3, 32, 32) (`sample_p0`). For k = 0 .. K-2:
        eps_k   = UNet(y_k, [m(t_k)] * n)              (the model receives m as a float)
        xi_k    = randn_like(y_k)                      (drawn after the forward pass)
        y_{k+1} = y_k + (y_k kappa - eps_k g / beta) dt_k + xi_k sqrt(dt_k) s
    and the last step returns the endpoint estimate of the epsilon model (section 2), no noise:
        x_final = (y_{K-1} - beta eps_{K-1}) / alpha   (at t_{K-1}).
    torch.manual_seed(c) followed by the same randn calls reproduces the host's draws: the same
    libtorch (2.13.0, CPU), the same generator, the same sequence of float32 draws (bit for bit
    where both use the same CPU kernel; libtorch's AVX2 and default normal kernels differ in the
    last bits). Scalars are float64, tensors float32. The script then runs the same path in
    float64 (UNet and arithmetic) on the same draws, and records how far float32 rounding
    moved each state from it: the scale of the rounding error through the depth of the path.
    Tensors:
    seed         i64 [1]                  the seed given to the host's `sample`
    t            f64 [100]                t_0 .. t_{K-1}
    k            i64 [100]                m(t_k), the model time of each step
    s            f64 [100]                s(t_k) of each Euler-Maruyama step; 0 for the last
    alpha_bar    f64 [1000]               the scheduler's alphas_cumprod (as float64)
    state_steps  i64 [13]                 the steps k whose state y_k is recorded: 0, 1, 10, 20,
                                          ..., 90, 98, 99 (those of eps_steps and two more)
    states       f32 [13, 2, 3, 32, 32]   y_k at those steps (y_0 is the plugin's noise draw)
    eps_steps    i64 [11]                 the steps k whose eps is recorded: 0, 10, ..., 90, 99
    eps          f32 [11, 2, 3, 32, 32]   eps_k = UNet(y_k, m(t_k)) at those steps
    x_final      f32 [2, 3, 32, 32]       the endpoint estimate the host returns as final state
    states_rounding   f64 [13]   max |y_k - y_k(float64)| / max |y_k(float64)| at state_steps
    x_final_rounding  f64 [1]    the same for x_final

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


def cifar() -> None:
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


# The host's derivation of a chunk's seed (host/src/sde/sampler.rs, `chunk_seed`).
SEED_MULTIPLIER = 0x9E3779B97F4A7C15
# How far the host keeps a discrete schedule's alpha_bar from 0 and 1.
ALPHA_BAR_CLIP = 2.0**-24


def step_index(t: float, M: int) -> int:
    """m(t) = round((1 - t) M), half away from zero, clamped to [0, M]."""
    v = (1.0 - t) * M
    assert abs(v - math.floor(v) - 0.5) > 1e-6, "a rounding tie on the grid"
    return min(max(math.floor(v + 0.5), 0), M)


def discrete_schedule(ab: list[float], t: float) -> tuple[int, float, float, float, float]:
    """m(t), alpha, beta, alpha', beta' of a discrete schedule (docs/mathematics.md, section 1)."""
    M = len(ab) - 1
    m = step_index(t, M)
    prev = 1.0 if m == 0 else ab[m - 1]
    ab_dot = M * (prev - ab[m])
    alpha, beta = math.sqrt(ab[m]), math.sqrt(1.0 - ab[m])
    return m, alpha, beta, ab_dot / (2.0 * alpha), -ab_dot / (2.0 * beta)


def sampling_path(model, ab: list[float], t: list[float], y, draw):
    """The host's base-model path from `y` = y_0: docs/mathematics.md, sections 3 and 6, with the
    endpoint estimate as the last step. `draw(y)` gives the step's noise after the forward pass.
    Returns the states y_0 .. y_{K-1}, the model outputs eps_0 .. eps_{K-1}, and for each step
    (m, s) with s = 0 for the last step, and the final state."""
    K, n = len(t) - 1, y.shape[0]
    states, eps_all, coefficients = [], [], []
    with torch.no_grad():
        for k in range(K):
            dt = t[k + 1] - t[k]
            m, alpha, beta, alpha_dot, beta_dot = discrete_schedule(ab, t[k])
            kappa = alpha_dot / alpha
            eta = beta * (kappa * beta - beta_dot)
            s = math.sqrt(2.0 * eta)
            g = s * s / 2.0 + eta
            eps = model(y, torch.full((n,), float(m), dtype=y.dtype)).sample
            states.append(y)
            eps_all.append(eps)
            if k == K - 1:
                coefficients.append((m, 0.0))
                y = (y - beta * eps) / alpha
            else:
                coefficients.append((m, s))
                xi = draw(y)
                y = y + (y * kappa - eps * (g / beta)) * dt + xi * (math.sqrt(dt) * s)
    return states, eps_all, coefficients, y


def relative_error(a: torch.Tensor, exact: torch.Tensor) -> float:
    return ((a.double() - exact).abs().max() / exact.abs().max()).item()


def cifar_sampling() -> None:
    folder = OUT / "cifar-tiny"
    model = UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=False).eval()
    config = json.loads((folder / "scheduler_config.json").read_text())
    scheduler = DDPMScheduler(**{k: v for k, v in config.items() if not k.startswith("_")})
    ab = [min(max(a, ALPHA_BAR_CLIP), 1.0 - ALPHA_BAR_CLIP) for a in scheduler.alphas_cumprod.double().tolist()]
    t0, K, n, seed = 0.02, 100, 2, 7
    t = [t0 + (1.0 - t0) * k / K for k in range(K + 1)]
    eps_steps = list(range(0, K, 10)) + [K - 1]
    state_steps = sorted(set(eps_steps) | {1, K - 2})

    # float32, with the host's random numbers.
    torch.manual_seed((seed * SEED_MULTIPLIER) % 2**64)
    y0 = torch.randn(n, 3, 32, 32)
    noise = []

    def draw(y):
        noise.append(torch.randn_like(y))
        return noise[-1]

    states, eps, coefficients, x_final = sampling_path(model, ab, t, y0, draw)

    # The same path in float64 from the same draws: what float32 rounding did to each state.
    replay = iter(noise)
    states64, _, _, x_final64 = sampling_path(model.double(), ab, t, y0.double(), lambda y: next(replay).double())
    rounding = [relative_error(states[k], states64[k]) for k in state_steps]
    final_rounding = relative_error(x_final, x_final64)

    save_io(
        "cifar_sampling.safetensors",
        {
            "seed": torch.tensor([seed], dtype=torch.int64),
            "t": torch.tensor(t[:K], dtype=torch.float64),
            "k": torch.tensor([m for m, _ in coefficients], dtype=torch.int64),
            "s": torch.tensor([s for _, s in coefficients], dtype=torch.float64),
            "alpha_bar": torch.tensor(ab, dtype=torch.float64),
            "state_steps": torch.tensor(state_steps, dtype=torch.int64),
            "states": torch.stack([states[k] for k in state_steps]),
            "states_rounding": torch.tensor(rounding, dtype=torch.float64),
            "eps_steps": torch.tensor(eps_steps, dtype=torch.int64),
            "eps": torch.stack([eps[k] for k in eps_steps]),
            "x_final": x_final,
            "x_final_rounding": torch.tensor([final_rounding], dtype=torch.float64),
        },
        # One key: safetensors writes several in no fixed order.
        metadata={"sampler": f"memoryless, steps {K}, t0 {t0}"},
    )
    print(
        f"cifar sampling: m {coefficients[0][0]}..{coefficients[-1][0]}, |x_final| max {x_final.abs().max():.3f}, "
        f"float32 rounding of the states up to {max(rounding):.2e}, of x_final {final_rounding:.2e}"
    )


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
    cifar()
    cifar_sampling()
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
