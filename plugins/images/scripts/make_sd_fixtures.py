#!/usr/bin/env python3
"""Golden fixtures of the `images/sd2` and `images/sd1.5` entries (`plugins/images/src/sd/`).

Builds two TINY random text-to-image pipelines that diffusers' `StableDiffusionPipeline` loads,
saved in the folder layout of the published repositories (`model_index.json`, `unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`), loads each back with
`StableDiffusionPipeline.from_pretrained` and records what the pipeline computes, for the Rust
tests in `plugins/images/tests/sd_pipeline.rs`. Nothing is downloaded: every model is random with
a fixed seed; the tokenizer is the real CLIP BPE vocabulary cut to its first merges (from the
`bpe_simple_vocab_16e6.txt.gz` that open_clip bundles, as `make_clip_fixtures.py` does).

Run with the reference environment (torch 2.13.0, diffusers 0.42.1, transformers 5.24.0,
open_clip_torch 3.3.0, safetensors):

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_sd_fixtures.py

Outputs, under `plugins/images/tests/fixtures/sd/`:

`sd2/` -- SD 2-style (`stabilityai/stable-diffusion-2-base`): UNet with linear projections and
    per-level head counts [1, 2, 2, 2], cross-attention width 24; CLIP text encoder with the exact
    GELU of OpenCLIP (`hidden_act: gelu`), width 24; tokenizer padding with `!` (set in
    `special_tokens_map.json`, as published); VAE scaling factor 0.18215 (as published).
`sd15/` -- SD 1.5-style (`stable-diffusion-v1-5/stable-diffusion-v1-5`): UNet with 1x1-convolution
    projections and 2 heads everywhere, cross-attention width 16; text encoder with `quick_gelu`,
    width 16; tokenizer padding with `<|endoftext|>`; VAE scaling factor 0.5 (the published one is
    0.18215; another value here proves that the Rust side reads it from `vae/config.json`).

Both: scheduler `PNDMScheduler` with SD's published config (scaled_linear betas 0.00085 to 0.012,
1000 steps, epsilon prediction). The text encoder is stored the way the published checkpoints
are: names under `text_model.` and a `text_model.embeddings.position_ids` buffer (transformers 5
would save neither). UNet and VAE weights are `diffusion_pytorch_model.safetensors`, the text
encoder's `model.safetensors`.

`<variant>_io.safetensors` (prompts and negative prompt in its metadata, as JSON):
    input_ids          i64 [3, 77]          `pipe.tokenizer(prompts, padding="max_length", ...)`
    negative_ids       i64 [1, 77]          the same for the negative prompt
    prompt_embeds      f32 [3, 77, D]       `pipe.encode_prompt(...)[0]` (text_encoder(ids)[0],
                                            the last hidden state after the final layer norm)
    negative_embeds    f32 [3, 77, D]       `pipe.encode_prompt(...)[1]`, negative prompt
    latents            f32 [3, 4, 6, 8]     latents of 48 x 64 images
    timestep           f32 []               the UNet timestep k (the same for every sample)
    eps_uncond_free    f32 [3, 4, 6, 8]     `unet(latents, k, prompt_embeds)` (no guidance)
    eps_guided         f32 [3, 4, 6, 8]     StableDiffusionPipeline's guidance at 7.5: one UNet
                                            call on [latents; latents] with [negative; prompt]
                                            embeddings, `uncond + 7.5 * (text - uncond)`
    decode_latents     f32 [3, 4, 6, 8]     latents given to the decoder
    images             f32 [3, 3, 48, 64]   `vae.decode(latents / scaling_factor)` then
                                            `pipe.image_processor.postprocess(output_type="pt")`,
                                            that is `(x / 2 + 0.5).clamp(0, 1)`
    p0_latents         f32 [2, 4, 6, 8]     `torch.manual_seed(7); torch.randn(2, 4, 6, 8)`: the
                                            draw `sample_p0` makes after the host seeds libtorch
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import open_clip
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from open_clip.tokenizer import bytes_to_unicode
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sd"
# The first merges of the real CLIP vocabulary; few, to keep the token embedding small.
NUM_MERGES = 400
GUIDANCE = 7.5
PROMPTS = [
    "a photo of a cat",
    "A watercolor painting of a mountain lake at sunset!!",
    " ".join(["an astronaut riding a horse on mars, highly detailed"] * 6),
]
NEGATIVE = "blurry, low quality"

# scheduler/scheduler_config.json of both published repositories (keys that matter).
SD_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

VARIANTS = {
    "sd2": {
        "seed": 20,
        "timestep": 979.0,
        "pad_token": "!",
        "text": {"hidden_size": 24, "intermediate_size": 40, "num_attention_heads": 4, "hidden_act": "gelu"},
        "unet": {
            "attention_head_dim": [1, 2, 2, 2],
            "use_linear_projection": True,
            "cross_attention_dim": 24,
        },
        "vae_scaling_factor": 0.18215,
    },
    "sd15": {
        "seed": 15,
        "timestep": 500.0,
        "pad_token": "<|endoftext|>",
        "text": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "hidden_act": "quick_gelu"},
        "unet": {"attention_head_dim": 2, "cross_attention_dim": 16},
        "vae_scaling_factor": 0.5,
    },
}


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def clip_vocab_and_merges():
    gz = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]][:NUM_MERGES]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def special(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_tokenizer(folder: Path, vocab: dict, merges: list, pad_token: str) -> None:
    """`tokenizer/` as published: vocab.json, merges.txt, tokenizer_config.json and
    special_tokens_map.json (SD 2 sets pad `!` in the latter only)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": {"__type": "AddedToken", **special("<|startoftext|>")},
            "do_lower_case": True,
            "eos_token": {"__type": "AddedToken", **special("<|endoftext|>")},
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": {"__type": "AddedToken", **special("<|endoftext|>")},
        },
    )
    write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": special("<|startoftext|>"),
            "eos_token": special("<|endoftext|>"),
            "pad_token": pad_token,
            "unk_token": special("<|endoftext|>"),
        },
    )


def perturb_norms(model: torch.nn.Module) -> None:
    """Random affine parameters for every normalisation layer (torch starts them at 1 and 0,
    which would hide a swapped weight and bias)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))


def build(name: str, spec: dict, vocab: dict, merges: list) -> Path:
    torch.manual_seed(spec["seed"])
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=SD_DOWN,
        up_block_types=SD_UP,
        block_out_channels=[4, 8, 8, 8],
        layers_per_block=1,
        norm_num_groups=2,
        **spec["unet"],
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[4, 8, 8, 8],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=64,
        scaling_factor=spec["vae_scaling_factor"],
    ).eval()
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=spec["text"]["hidden_size"],
        layer_norm_eps=1e-5,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=1,
        **spec["text"],
    )
    text_encoder = CLIPTextModel(text_config).eval()
    with torch.no_grad():
        # Token embeddings at the scale of trained ones (the default init is tiny).
        text_encoder.get_input_embeddings().weight.normal_(0.0, 0.5)
    for model in (unet, vae, text_encoder):
        perturb_norms(model)

    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    write_tokenizer(OUT / "_tokenizer", vocab, merges, spec["pad_token"])
    tokenizer = CLIPTokenizer.from_pretrained(OUT / "_tokenizer")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # The published tokenizer files, not what transformers 5 writes.
    write_tokenizer(folder / "tokenizer", vocab, merges, spec["pad_token"])
    shutil.rmtree(OUT / "_tokenizer")
    # The published text-encoder naming: `text_model.*` and the `position_ids` buffer.
    te = folder / "text_encoder"
    state = load_file(str(te / "model.safetensors"))
    for stray in te.glob("*.safetensors*"):
        stray.unlink()
    state = {(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in state.items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_file(state, str(te / "model.safetensors"), metadata={"format": "pt"})
    return folder


def references(name: str, folder: Path, spec: dict) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    state = load_file(str(folder / "text_encoder" / "model.safetensors"))
    assert "text_model.embeddings.position_ids" in state
    tok = pipe.tokenizer
    assert tok.pad_token == spec["pad_token"], tok.pad_token
    n = len(PROMPTS)

    def ids(texts):
        return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids

    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    latents = torch.randn((n, 4, 6, 8), generator=gen)
    decode_latents = torch.randn((n, 4, 6, 8), generator=gen) * pipe.vae.config.scaling_factor
    t = torch.tensor(spec["timestep"])
    with torch.no_grad():
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            PROMPTS, "cpu", 1, True, negative_prompt=[NEGATIVE] * n
        )
        # StableDiffusionPipeline.__call__'s loop body, one step.
        latent_model_input = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_pred = pipe.unet(
            latent_model_input, t, encoder_hidden_states=torch.cat([negative_embeds, prompt_embeds]), return_dict=False
        )[0]
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        eps_guided = noise_pred_uncond + GUIDANCE * (noise_pred_text - noise_pred_uncond)
        eps_free = pipe.unet(pipe.scheduler.scale_model_input(latents, t), t, encoder_hidden_states=prompt_embeds).sample
        decoded = pipe.vae.decode(decode_latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        images = pipe.image_processor.postprocess(decoded, output_type="pt", do_denormalize=[True] * n)
    torch.manual_seed(7)
    p0_latents = torch.randn(2, 4, 6, 8)
    tensors = {
        "input_ids": ids(PROMPTS),
        "negative_ids": ids([NEGATIVE]),
        "prompt_embeds": prompt_embeds,
        "negative_embeds": negative_embeds,
        "latents": latents,
        "timestep": t.float(),
        "eps_uncond_free": eps_free,
        "eps_guided": eps_guided,
        "decode_latents": decode_latents,
        "images": images,
        "p0_latents": p0_latents,
    }
    metadata = {"prompts": json.dumps(PROMPTS), "negative_prompt": NEGATIVE, "guidance_scale": str(GUIDANCE)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / f"{name}_io.safetensors"), metadata=metadata)
    clamped = ((decoded / 2 + 0.5) < 0) | ((decoded / 2 + 0.5) > 1)
    print(
        f"{name}: |embeds| max {prompt_embeds.abs().max():.2f}, |eps_guided| max {eps_guided.abs().max():.2f}, "
        f"|eps_free| max {eps_free.abs().max():.2f}, clamped pixels {clamped.float().mean():.1%}"
    )


def main() -> None:
    torch.set_num_threads(1)
    vocab, merges = clip_vocab_and_merges()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, spec in VARIANTS.items():
        folder = build(name, spec, vocab, merges)
        references(name, folder, spec)
    total = 0
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            total += path.stat().st_size
            print(f"{path.relative_to(OUT)}: {path.stat().st_size / 1024:.0f} KiB")
    print(f"total: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
