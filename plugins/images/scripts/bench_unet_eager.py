#!/usr/bin/env python3
"""UNet forward time, Flow Gym (tch) against diffusers eager PyTorch, same weights and threads.

Writes diffusers folders with published configurations and random weights (fixed seed) under
--dir (kept for later runs):

* `cifar/`: `UNet2DModel`, `google/ddpm-cifar10-32` (35.7 M parameters), 32 x 32 samples;
* `sd2/`: `UNet2DConditionModel`, `stabilityai/stable-diffusion-2-base` (866 M parameters,
  3.5 GB), run guided: batch b is 2 b latents of size / 8 with a 77-token context.

Then, per architecture and thread count, it alternates rounds: the Rust example
`target/release/examples/unet_speed` (one process: every batch size, `--warmup` untimed and
`--repeat` timed forwards each), then diffusers in this process (the same, under
`torch.no_grad()` as diffusers' pipelines run). It prints, per batch size, the median seconds of
all timed forwards of each side and their ratio Flow Gym / diffusers. The machine may be shared:
only compare figures of one run. (`bench_cifar.py` times a whole sampling step through the
host instead; this times the UNet alone, in process, for both architectures.)

    cargo xtask cargo build --release -p flowgym-images --example unet_speed
    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/bench_unet_eager.py \
        --arch cifar sd --threads 1 2 --batches 1 2 4 8 --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

ROOT = Path(__file__).resolve().parents[3]
PUBLISHED = ROOT / "plugins/images/tests/fixtures/diffusers/published.json"
CONFIGS = {
    "cifar": (UNet2DModel, "google/ddpm-cifar10-32"),
    "sd": (UNet2DConditionModel, "stabilityai/stable-diffusion-2-base/unet"),
}


def folder(out: Path, arch: str) -> Path:
    """The architecture's folder under `out`, written first if missing."""
    path = out / arch
    if not (path / "config.json").exists():
        cls, name = CONFIGS[arch]
        config = json.loads(PUBLISHED.read_text())[name]["config"]
        torch.manual_seed(0)
        cls(**{k: v for k, v in config.items() if not k.startswith("_")}).save_pretrained(path)
    return path


def diffusers_seconds(unet, arch, batch, size, dtype, warmup, repeat):
    """Seconds of each timed forward of diffusers' UNet on random inputs (made inside the time,
    as the Rust side does)."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeat):
            start = time.perf_counter()
            if arch == "cifar":
                x = torch.randn(batch, unet.config.in_channels, size, size, dtype=dtype)
                unet(x, torch.full((batch,), 500.0)).sample
            else:
                latent = size // 8
                x = torch.randn(2 * batch, unet.config.in_channels, latent, latent, dtype=dtype)
                context = torch.randn(2 * batch, 77, unet.config.cross_attention_dim, dtype=dtype)
                unet(x, torch.tensor([500.0]), context).sample
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def rust_seconds(args, arch, path, threads, size):
    """Seconds of each timed forward per batch size, from one run of the Rust example."""
    command = [
        str(args.bin), arch, str(path), "--batches", ",".join(map(str, args.batches)),
        "--size", str(size), "--threads", str(threads), "--warmup", str(args.warmup),
        "--repeat", str(args.repeat), "--dtype", args.dtype,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return {line["batch"]: line["seconds"] for line in map(json.loads, out.splitlines())}


def check(args, arch, path, size, dtype, unet):
    """Runs one forward of each side on the Rust side's inputs and prints how far apart the
    outputs are, relative to the output's largest magnitude."""
    with tempfile.TemporaryDirectory(prefix="unet-speed-check-") as tmp:
        command = [
            str(args.bin), arch, str(path), "--batches", str(args.batches[0]), "--size", str(size),
            "--threads", "1", "--warmup", "0", "--repeat", "0", "--dtype", args.dtype, "--save", tmp,
        ]
        subprocess.run(command, check=True, capture_output=True)
        load = lambda name: torch.from_numpy(np.load(Path(tmp) / f"{name}.npy")).to(dtype)
        inputs = [load("x"), load("t").float()] + ([load("context")] if arch == "sd" else [])
        ours = load("out").float()
    with torch.no_grad():
        theirs = unet(*inputs).sample.float()
    error = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    print(f"{arch} {args.dtype} batch {args.batches[0]}: max |Flow Gym - diffusers| / max |diffusers| = {error:.2e}")


def bench(args, arch, threads):
    size = 32 if arch == "cifar" else args.sd_size
    path = folder(args.dir, arch)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(threads)
    unet = CONFIGS[arch][0].from_pretrained(path, torch_dtype=dtype).eval()
    if args.check:
        check(args, arch, path, size, dtype, unet)
        return
    rust = {b: [] for b in args.batches}
    python = {b: [] for b in args.batches}
    for _ in range(args.rounds):
        for b, seconds in rust_seconds(args, arch, path, threads, size).items():
            rust[b] += seconds
        for b in args.batches:
            python[b] += diffusers_seconds(unet, arch, b, size, dtype, args.warmup, args.repeat)
    for b in args.batches:
        r, p = statistics.median(rust[b]), statistics.median(python[b])
        print(
            f"| {arch} | {args.dtype} | {threads} | {b} | {r:.4f} | {p:.4f} | {r / p:.3f} |",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", choices=list(CONFIGS), default=["cifar", "sd"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="alternations Rust / diffusers")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per batch and round")
    parser.add_argument("--repeat", type=int, default=2, help="timed forwards per batch and round")
    parser.add_argument("--sd-size", type=int, default=256, help="image edge in pixels for sd")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/unet-speed"))
    parser.add_argument("--check", action="store_true", help="compare one forward's outputs instead of timing")
    parser.add_argument("--bin", type=Path, default=ROOT / "target/release/examples/unet_speed")
    args = parser.parse_args()
    args.threads = args.threads[:1] if args.check else args.threads
    if not args.bin.exists():
        sys.exit(f"{args.bin} is missing: cargo xtask cargo build --release -p flowgym-images --example unet_speed")
    if not args.check:
        print("| UNet | dtype | threads | batch | Flow Gym s | diffusers s | ratio |")
        print("|---|---|---|---|---|---|---|")
    for arch in args.arch:
        for threads in args.threads:
            bench(args, arch, threads)


if __name__ == "__main__":
    main()
