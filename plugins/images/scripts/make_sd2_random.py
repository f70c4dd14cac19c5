#!/usr/bin/env python3
"""The headline pair at full size with random weights, for `flowgym-host bench memory`.

Real Stable Diffusion 2 and CLIP ViT-L/14 weights cannot be downloaded here; their memory use
depends only on the architectures, so this writes folders with the published configurations
and random weights (fixed seed), in the published layouts and precisions (float32 safetensors):

    OUT/sd2/    unet/ vae/ text_encoder/ tokenizer/ scheduler/   (stable-diffusion-2-base)
    OUT/clip/   config.json model.safetensors                    (openai/clip-vit-large-patch14)
    OUT/head.pth                                                 (sac+logos+ava1-l14-linearMSE)

The UNet and VAE configs are those of `tests/fixtures/diffusers/published.json` (copied from the
published repositories); the text encoder is OpenCLIP ViT-H/14's text tower as SD 2 exports it
(23 layers of width 1024); the tokenizer files are the test fixture's (the vocabulary size is
the config's). About 7 GB are written.

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_sd2_random.py OUT
    cargo xtask host bench memory --model-args '{"weights": "OUT/sd2"}' \
        --reward-args '{"clip": "OUT/clip", "head": "OUT/head.pth"}'
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def published(name):
    config = json.loads((FIXTURES / "diffusers" / "published.json").read_text())[name]["config"]
    return {k: v for k, v in config.items() if not k.startswith("_")}


def main(out):
    torch.manual_seed(0)
    sd2 = out / "sd2"
    UNet2DConditionModel(**published("stabilityai/stable-diffusion-2-base/unet")).save_pretrained(
        sd2 / "unet"
    )
    AutoencoderKL(**published("stable-diffusion-v1-5/vae")).save_pretrained(sd2 / "vae")
    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=512,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    CLIPTextModel(text).save_pretrained(sd2 / "text_encoder")
    shutil.copytree(FIXTURES / "sd" / "sd2" / "tokenizer", sd2 / "tokenizer", dirs_exist_ok=True)
    shutil.copytree(FIXTURES / "sd" / "sd2" / "scheduler", sd2 / "scheduler", dirs_exist_ok=True)

    clip = CLIPConfig(
        text_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "hidden_act": "quick_gelu",
        },
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 224,
            "hidden_act": "quick_gelu",
        },
        projection_dim=768,
    )
    CLIPModel(clip).save_pretrained(out / "clip")

    widths = [1024, 128, 64, 16, 1]
    layers, dim = [], 768
    for i, width in enumerate(widths):
        layers.append(torch.nn.Linear(dim, width))
        if i < 3:
            layers.append(torch.nn.Dropout(0.1))
        dim = width
    head = torch.nn.Module()
    head.layers = torch.nn.Sequential(*layers)
    torch.save(head.state_dict(), out / "head.pth")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
