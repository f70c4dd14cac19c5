#!/usr/bin/env python3
"""Generates the golden fixtures of the CLIP tokenizer, CLIP text / vision transformers, the CLIP
image preprocessing and the LAION aesthetic predictor (`plugins/images/tests/fixtures/clip/`).

Everything is tiny and random with fixed seeds: no download from a model hub is needed. The
tokenizer vocabulary is the real CLIP BPE vocabulary cut to its first merges (taken from the
`bpe_simple_vocab_16e6.txt.gz` that open_clip bundles), written in the layout of the
`tokenizer/` folders of the Stable Diffusion repositories. Models are saved in the published
transformers layout (`text_model.*`, `vision_model.*`, `visual_projection.weight`).

Python environment (the versions the fixtures were made with):

    python3 -m venv ~/.cache/flowgym/pyref
    ~/.cache/flowgym/pyref/bin/pip install torch==2.13.0 torchvision==0.28.0 \
        transformers==5.24.0 tokenizers==0.23.3 open_clip_torch==3.3.0 safetensors pillow

Run from anywhere:

    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_clip_fixtures.py
"""

import gzip
import json
import pathlib
import shutil

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import bytes_to_unicode
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "clip"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# The first merges of the real vocabulary: enough for common English words to merge.
NUM_MERGES = 2000


def reset_out():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Tokenizer


PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "",
    "   leading and trailing   spaces\t\nand\ttabs   ",
    "hello!! world?! (parentheses) [brackets] {braces} <angles> @#$%^&*",
    "it's, they're, we've, I'm, you'll, he'd; isn't",
    "3.14159 is pi, 2024-01-31, 1000000 and 42nd",
    "Café naïve résumé Straße ÉCOLE",
    "日本語のテキスト and 中文 and 한국어",
    "emoji 🙂🚀 and symbols ™ © ½",
    "explicit <|startoftext|> and <|endoftext|> markers",
    "astronaut riding a horse on mars, trending on artstation, highly detailed, 4k!",
    " ".join(["a very long prompt about a mountain lake at sunset with dramatic clouds"] * 8),
    "!" * 5 + " exclamations",
    "newline\r\nseparated\u00a0non-breaking\u2003em-space",
]


def clip_vocab_and_merges():
    gz = pathlib.Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]][:NUM_MERGES]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def added_token(content):
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def write_tokenizer_folder(folder, vocab, merges, pad_token):
    """The files of `tokenizer/` in runwayml/stable-diffusion-v1-5 (pad `<|endoftext|>`) or
    stabilityai/stable-diffusion-2-1 (pad `!`, set in special_tokens_map.json only)."""
    folder.mkdir(parents=True)
    write_json(folder / "vocab.json", vocab)
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": added_token("<|startoftext|>"),
            "do_lower_case": True,
            "eos_token": added_token("<|endoftext|>"),
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": "<|endoftext|>",
            "special_tokens_map_file": "./special_tokens_map.json",
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": added_token("<|endoftext|>"),
        },
    )
    write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": {k: v for k, v in added_token("<|startoftext|>").items() if k != "__type"},
            "eos_token": {k: v for k, v in added_token("<|endoftext|>").items() if k != "__type"},
            "pad_token": pad_token,
            "unk_token": {k: v for k, v in added_token("<|endoftext|>").items() if k != "__type"},
        },
    )


def make_tokenizer():
    vocab, merges = clip_vocab_and_merges()
    cases = {"prompts": PROMPTS}
    for name, pad in [("tokenizer_sd15", "<|endoftext|>"), ("tokenizer_sd2", "!")]:
        folder = OUT / name
        write_tokenizer_folder(folder, vocab, merges, pad)
        tok = CLIPTokenizer.from_pretrained(folder)
        assert tok.model_max_length == 77
        ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
        cases[name] = {"pad_token": tok.pad_token, "pad_id": tok.pad_token_id, "input_ids": ids}
    # A folder with only `tokenizer.json` (the fast-tokenizer serialisation) and the configs.
    folder = OUT / "tokenizer_json"
    folder.mkdir()
    tok = CLIPTokenizer.from_pretrained(OUT / "tokenizer_sd2")
    tok.backend_tokenizer.save(str(folder / "tokenizer.json"))
    for config in ["tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(OUT / "tokenizer_sd2" / config, folder / config)
    tok = CLIPTokenizer.from_pretrained(folder)
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert ids == cases["tokenizer_sd2"]["input_ids"]
    cases["tokenizer_json"] = {"pad_token": tok.pad_token, "pad_id": tok.pad_token_id, "input_ids": ids}
    write_json(OUT / "tokenizer_cases.json", cases)


# --------------------------------------------------------------------------------------------
# Models


def text_config(hidden_act, layers):
    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=24,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=1,
    )


def vision_config(image_size=32, patch_size=8):
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_channels=3,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=24,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def randomize(model, seed):
    """Random weights with realistic scale (layer norms away from 1 / 0, so they matter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("logit_scale"):
                continue
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model.eval()


def published_text_state(model, prefix="text_model."):
    """transformers 5 saves CLIPTextModel without the `text_model.` prefix; the published
    checkpoints (the SD `text_encoder/`) have it, and older exports carry `position_ids`."""
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    state[prefix + "embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return state


def save_model_folder(folder, config_dict, state):
    folder.mkdir(parents=True)
    write_json(folder / "config.json", config_dict)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def make_text():
    cases = {}
    for name, act, layers, seed in [("text_quick_gelu", "quick_gelu", 3, 1), ("text_gelu", "gelu", 2, 2)]:
        config = text_config(act, layers)
        model = randomize(CLIPTextModel(config), seed)
        save_model_folder(OUT / name, {"architectures": ["CLIPTextModel"], **config.to_dict()}, published_text_state(model))
        gen = torch.Generator().manual_seed(100 + seed)
        ids = torch.randint(2, 997, (3, 77), generator=gen)
        # Like the tokenizer's output: BOS, text, EOS, then padding (EOS or 0).
        ids[:, 0] = 998
        for row, (length, pad) in enumerate([(5, 999), (20, 0), (76, 999)]):
            ids[row, length] = 999
            ids[row, length + 1 :] = pad
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            penultimate = model.final_layer_norm(out.hidden_states[-2])
        cases[f"{name}.input_ids"] = ids
        cases[f"{name}.last_hidden_state"] = out.last_hidden_state
        cases[f"{name}.penultimate"] = penultimate
        cases[f"{name}.pooler_output"] = out.pooler_output
    save_file({k: v.contiguous() for k, v in cases.items()}, str(OUT / "text_cases.safetensors"))


def make_vision():
    config = vision_config()
    model = randomize(CLIPVisionModelWithProjection(config), 3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_model_folder(OUT / "vision", {"architectures": ["CLIPVisionModelWithProjection"], **config.to_dict()}, state)
    gen = torch.Generator().manual_seed(103)
    pixels = torch.randn((4, 3, 32, 32), generator=gen)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    save_file(
        {"pixel_values": pixels, "image_embeds": out.image_embeds.contiguous()},
        str(OUT / "vision_cases.safetensors"),
    )


# --------------------------------------------------------------------------------------------
# Preprocessing


def preprocess(images, size):
    """The tensor path of transformers' CLIPImageProcessor (torchvision backend) on float images
    in [0, 1]: bicubic antialiased resize of the shortest side, center crop, normalisation."""
    _, _, h, w = images.shape
    short, long = min(h, w), max(h, w)
    if short != size:
        new_long = int(size * long / short)
        new_h, new_w = (size, new_long) if h <= w else (new_long, size)
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    _, _, h, w = images.shape
    top, left = int((h - size) / 2.0), int((w - size) / 2.0)
    images = images[:, :, top : top + size, left : left + size]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def formula_image(h, w):
    """A smooth, deterministic image that the Rust test builds the same way (float64 -> f32)."""
    c = np.arange(3, dtype=np.float64)[:, None, None]
    y = np.arange(h, dtype=np.float64)[None, :, None]
    x = np.arange(w, dtype=np.float64)[None, None, :]
    img = 0.5 + 0.5 * np.sin(0.05 * x + 0.031 * y + 1.3 * c) * np.cos(0.017 * x * (c + 1) - 0.043 * y)
    return torch.from_numpy(img.astype(np.float32))[None]


def make_preprocess():
    gen = torch.Generator().manual_seed(104)
    cases = {}
    # (height, width, size): downscale with antialiasing, upscale, odd crops, identity.
    for i, (h, w, size) in enumerate([(50, 70, 32), (96, 41, 32), (20, 24, 32), (64, 64, 32), (33, 40, 32), (67, 90, 40)]):
        images = torch.rand((2 if i == 0 else 1, 3, h, w), generator=gen)
        cases[f"case{i}.input"] = images
        cases[f"case{i}.output"] = preprocess(images, size)
    # The real size: a 512 x 768 formula image to 224, stored every 7th pixel.
    out = preprocess(formula_image(512, 768), 224)
    cases["formula_512x768.output_every_7th"] = out[:, :, ::7, ::7].contiguous()
    save_file({k: v.contiguous() for k, v in cases.items()}, str(OUT / "preprocess_cases.safetensors"))


# --------------------------------------------------------------------------------------------
# Aesthetic predictor


class MlpHead(torch.nn.Module):
    """christophschuhmann/improved-aesthetic-predictor `sac+logos+ava1-l14-linearMSE.pth`
    (widths 1024, 128, 64, 16 there; smaller here)."""

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


def make_aesthetic():
    folder = OUT / "aesthetic"
    tc, vc = text_config("quick_gelu", 1), vision_config()
    config = CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=24)
    clip = randomize(CLIPModel(config), 5)
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_model_folder(folder / "clip", {"architectures": ["CLIPModel"], **config.to_dict()}, state)

    torch.manual_seed(6)
    # LAION-AI/aesthetic-predictor `sa_0_4_vit_l_14_linear.pth` is a bare Linear: keys `weight`, `bias`.
    heads = {"linear": torch.nn.Linear(24, 1).eval(), "mlp": MlpHead(24).eval()}
    for name, head in heads.items():
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / f"head_{name}.safetensors"))
        torch.save(head.state_dict(), folder / f"head_{name}.pth")
    # The pre-1.6 format (not read; the error must say how to convert). Its bytes differ from run
    # to run (storage keys are object ids); everything else here is reproducible to the byte.
    torch.save(heads["linear"].state_dict(), folder / "head_linear_legacy.pth", _use_new_zipfile_serialization=False)

    gen = torch.Generator().manual_seed(106)
    images = torch.rand((3, 3, 40, 52), generator=gen)
    images[0] = formula_image(40, 52)[0]
    cases = {"images": images}
    with torch.no_grad():
        def embed(pixels):
            pooled = clip.vision_model(pixel_values=pixels).pooler_output
            e = clip.visual_projection(pooled)
            return e / torch.linalg.vector_norm(e, dim=-1, keepdim=True)

        exact = embed(preprocess(images.clamp(0, 1), 32))
        # The DDPO pipeline: uint8 images through transformers' CLIPImageProcessor.
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        uint8 = (images * 255).round().clamp(0, 255).to(torch.uint8)
        ddpo = embed(processor(images=list(uint8), return_tensors="pt")["pixel_values"])
        for name, head in heads.items():
            cases[f"{name}.score"] = head(exact).squeeze(1)
            cases[f"{name}.score_ddpo_uint8"] = head(ddpo).squeeze(1)
    save_file({k: v.contiguous() for k, v in cases.items()}, str(folder / "aesthetic_cases.safetensors"))


if __name__ == "__main__":
    reset_out()
    make_tokenizer()
    make_text()
    make_vision()
    make_preprocess()
    make_aesthetic()
    print(f"wrote {OUT}")
