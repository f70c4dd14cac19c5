#!/usr/bin/env python3
"""PyTorch `.bin` weight files (zip-pickled state dicts, as `torch.save(model.state_dict())`
writes them) of the tiny fixture models, in float32 and float16.

Older repositories and caches hold only these files (`diffusion_pytorch_model.bin`,
`diffusion_pytorch_model.fp16.bin`, `pytorch_model.bin`): the tests check that the restricted
reader loads them to the same tensors as the safetensors files they are converted from.

Run with the reference environment (torch 2.13, safetensors):
    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/make_bin_fixtures.py
"""
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = FIXTURES / "bin"

SOURCES = {
    "cifar_unet": FIXTURES / "diffusers/cifar-tiny/diffusion_pytorch_model.safetensors",
    "sd2_unet": FIXTURES / "sd/sd2/unet/diffusion_pytorch_model.safetensors",
    "sd2_vae": FIXTURES / "sd/sd2/vae/diffusion_pytorch_model.safetensors",
    "sd2_text_encoder": FIXTURES / "sd/sd2/text_encoder/model.safetensors",
}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, source in SOURCES.items():
        tensors = load_file(source)
        state = OrderedDict(sorted(tensors.items()))
        torch.save(state, OUT / f"{name}.bin")
        half = OrderedDict(
            (k, v.half() if v.is_floating_point() else v) for k, v in state.items()
        )
        torch.save(half, OUT / f"{name}.fp16.bin")
        print(name, len(state), "tensors")


if __name__ == "__main__":
    main()
