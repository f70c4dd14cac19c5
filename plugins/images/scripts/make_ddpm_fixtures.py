#!/usr/bin/env python3
"""Golden fixtures for `images/ddpm` on UNet2DModel shapes other than CIFAR's.

Builds TINY random `UNet2DModel`s with diffusers and saves each as a DDPM pipeline folder in the
flat layout (`config.json`, `diffusion_pytorch_model.safetensors`, `scheduler_config.json`),
with one forward pass and the noise prediction its scheduler implies, under
`plugins/images/tests/fixtures/ddpm/`. Nothing is downloaded; every model is random with a
fixed seed. Run with the reference environment (torch 2.13.0, diffusers 0.42.1):

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_ddpm_fixtures.py

Models:

`gray16/` -- 1 channel, 16 x 16, two levels (DownBlock2D, AttnDownBlock2D), one resnet per
block, 8 features per attention head, a DDIMScheduler config predicting `v` with a
`scaled_linear` schedule and no clipping.

`rgb64/` -- 3 channels, 64 x 64, four levels whose attention sits at the first and third
(AttnDownBlock2D, DownBlock2D, AttnDownBlock2D, DownBlock2D), one head per attention
(`attention_head_dim` null), `scale_shift` time conditioning, `downsample_padding` 0, a mid block
without attention, GELU resnets, centred inputs, `flip_sin_to_cos` false and `freq_shift` 1, and
a DDPMScheduler config (`squaredcos_cap_v2`, `clip_sample` with range 0.5).

`resnet16/` -- 1 channel, 16 x 16, two levels of ResnetDownsampleBlock2D / AttnDownBlock2D
down and AttnUpBlock2D / ResnetUpsampleBlock2D up (down- and up-sampling by residual blocks),
`scale_shift` time conditioning, a DDIMScheduler config predicting the noise.

`skip32/` -- 3 channels, 32 x 32, three levels of skip blocks (SkipDownBlock2D,
SkipDownBlock2D, AttnSkipDownBlock2D down; AttnSkipUpBlock2D, SkipUpBlock2D, SkipUpBlock2D up:
the FIR-resampled image path of the score-SDE UNets, added to the output), a `fourier` time
embedding (so the output is divided by the timesteps), a 16-wide time embedding, no mid
block, weights stored in float16 (the reference runs their values in float32), and a
DDPMScheduler config without clipping.

`learned16/` -- 1 channel, 16 x 16, a `learned` time embedding of 1000 rows,
AttnDownBlock2D and AttnUpBlock2D with `downsample_type` and `upsample_type` `resnet`, the other
level's blocks named with diffusers' `UNetRes` prefix, 4 features per attention head and a mid
attention norm of its own (`attn_norm_num_groups` 2), and a clipping DDPMScheduler config. Its
UNet is given the steps as integers (an `nn.Embedding` index).

`heads16/` -- 3 channels, 16 x 16, two equal levels of attention blocks with no resnet in the
down blocks (`layers_per_block` 0), heads of 6 features that do not divide the 16 channels
(diffusers rounds the head count down: two heads over 12 of them), `downsample_padding` 0.

`<name>/io.safetensors`:
    x          f32 [2, C, H, W]   the input sample
    timesteps  f32 [2]            the step indices k given to the UNet
    out        f32 [2, C, H, W]   `UNet2DModel(x, timesteps).sample`
    eps        f32 [2, C, H, W]   the noise the scheduler implies: with a = sqrt(alphas_cumprod[k]),
                                  b = sqrt(1 - alphas_cumprod[k]), the predicted clean sample x0
                                  (epsilon: (x - b out) / a; v: a x - b out), clipped to
                                  +-clip_sample_range when the config clips, and
                                  eps = (x - a x0) / b, as DDPMScheduler.step computes
                                  `pred_original_sample` and the DDIM step its `pred_epsilon`.
"""
import copy
import os

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ddpm")


def write(name, unet, scheduler, timesteps, integer_steps=False, half=False):
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    if half:
        # Weights stored in float16 to keep the fixture small; the reference runs the same
        # (rounded) values in float32, as the loader reads them.
        unet = unet.half().float()
        copy.deepcopy(unet).half().save_pretrained(folder)
    else:
        unet.save_pretrained(folder)
    scheduler.save_config(folder)
    c = unet.config
    gen = torch.Generator().manual_seed(7)
    side = c.sample_size
    x = torch.randn(2, c.in_channels, side, side, generator=gen)
    t = torch.tensor(timesteps, dtype=torch.float32)
    with torch.no_grad():
        out = unet(x, t.long() if integer_steps else t).sample
    ab = scheduler.alphas_cumprod[t.long()].double().view(-1, 1, 1, 1)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    xd, od = x.double(), out.double()
    if scheduler.config.prediction_type == "epsilon":
        x0 = (xd - b * od) / a
    elif scheduler.config.prediction_type == "v_prediction":
        x0 = a * xd - b * od
    else:
        raise ValueError(scheduler.config.prediction_type)
    if scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)
    eps = ((xd - a * x0) / b).float()
    save_file(
        {"x": x, "timesteps": t, "out": out.contiguous(), "eps": eps.contiguous()},
        os.path.join(folder, "io.safetensors"),
    )
    print(name, sum(p.numel() for p in unet.state_dict().values()), "parameters")


def main():
    torch.manual_seed(0)
    gray = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()
    ddim = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        clip_sample=False,
    )
    write("gray16", gray, ddim, [3.0, 640.0])

    torch.manual_seed(1)
    rgb = UNet2DModel(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=None,
        resnet_time_scale_shift="scale_shift",
        downsample_padding=0,
        add_attention=False,
        act_fn="gelu",
        center_input_sample=True,
        flip_sin_to_cos=False,
        freq_shift=1,
    ).eval()
    ddpm = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, clip_sample_range=0.5)
    write("rgb64", rgb, ddpm, [10.0, 990.0])

    torch.manual_seed(2)
    resnet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        resnet_time_scale_shift="scale_shift",
    ).eval()
    write("resnet16", resnet, DDIMScheduler(clip_sample=False), [3.0, 640.0])

    torch.manual_seed(3)
    skip = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("SkipDownBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D", "SkipUpBlock2D"),
        mid_block_type=None,
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=16,
        time_embedding_type="fourier",
        time_embedding_dim=16,
    ).eval()
    write("skip32", skip, DDPMScheduler(clip_sample=False), [3.0, 640.0], half=True)

    torch.manual_seed(4)
    learned = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("AttnDownBlock2D", "UNetResDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UNetResUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attn_norm_num_groups=2,
        attention_head_dim=4,
        downsample_type="resnet",
        upsample_type="resnet",
        time_embedding_type="learned",
        num_train_timesteps=1000,
    ).eval()
    write("learned16", learned, DDPMScheduler(), [3.0, 640.0], integer_steps=True)

    torch.manual_seed(5)
    heads = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 16),
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        layers_per_block=0,
        norm_num_groups=4,
        attention_head_dim=6,
        downsample_padding=0,
    ).eval()
    write("heads16", heads, DDPMScheduler(clip_sample=False), [3.0, 640.0])


if __name__ == "__main__":
    main()
