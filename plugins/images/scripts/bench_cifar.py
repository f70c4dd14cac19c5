#!/usr/bin/env python3
"""Base-model sampling throughput of the full-size CIFAR-10 DDPM UNet: Flow Gym vs diffusers.

Builds a UNet2DModel with the published `google/ddpm-cifar10-32` config (35.7 M parameters) and
random weights (fixed seed), saves it in the diffusers folder layout, then measures in one run:

* Flow Gym: `flowgym-host bench sampling --model images/cifar` on that folder: the median
  seconds of one Euler-Maruyama step of the memoryless SDE (one UNet forward plus the update)
  for a batch of 16 on the CPU.
* diffusers: the same step written in PyTorch 2.13 around diffusers' UNet2DModel, with the same
  weights, batch, thread count and scheduler arithmetic.

It prints both, images per second at 100 steps, and their ratio. One step takes seconds on two
cores, so a few steps are timed (after a warm-up step).

Usage (from the repository root, after `cargo xtask run` or `cargo xtask host list` built the
host and plugins):

    python3 -m venv ~/.cache/flowgym/pyref && ~/.cache/flowgym/pyref/bin/pip install torch==2.13.0 diffusers==0.42.1
    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/bench_cifar.py [--threads 2] [--steps 3]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

ROOT = Path(__file__).resolve().parents[3]
PUBLISHED = ROOT / "plugins/images/tests/fixtures/diffusers/published.json"


def build_folder(folder: Path) -> UNet2DModel:
    config = json.loads(PUBLISHED.read_text())["google/ddpm-cifar10-32"]["config"]
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    unet = UNet2DModel(**config).eval()
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02).save_pretrained(
        folder / "scheduler"
    )
    return unet


def torch_step_seconds(unet: UNet2DModel, batch: int, warmup: int, steps: int) -> float:
    """The host's step, in PyTorch: epsilon drift of the memoryless SDE plus noise."""
    alpha_bar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    k_max = len(alpha_bar) - 1
    grid = [0.02 + (1 - 0.02) * j / 100 for j in range(101)]
    x = torch.randn(batch, 3, 32, 32)
    times = []
    with torch.no_grad():
        for j in range(warmup + steps):
            start = time.perf_counter()
            t, dt = grid[j], grid[j + 1] - grid[j]
            k = int(math.floor((1 - t) * k_max + 0.5))
            ab = alpha_bar[k].item()
            ab_prev = 1.0 if k == 0 else alpha_bar[k - 1].item()
            ab_dot = k_max * (ab_prev - ab)
            alpha, beta = math.sqrt(ab), math.sqrt(1 - ab)
            alpha_dot, beta_dot = ab_dot / (2 * alpha), -ab_dot / (2 * beta)
            kappa = alpha_dot / alpha
            eta = beta * (kappa * beta - beta_dot)
            s = math.sqrt(2 * eta)
            g = s * s / 2 + eta
            eps = unet(x, torch.full((batch,), float(k))).sample
            x = x + dt * (kappa * x - g / beta * eps) + math.sqrt(dt) * s * torch.randn_like(x)
            if j >= warmup:
                times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--host", type=Path, default=ROOT / "target/release/flowgym-host")
    args = parser.parse_args()
    if not args.host.exists():
        sys.exit(f"{args.host} is missing: build it first with `cargo xtask host list`")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="flowgym-bench-cifar-") as tmp:
        folder = Path(tmp)
        unet = build_folder(folder)
        parameters = sum(p.numel() for p in unet.parameters())
        command = [
            str(args.host), "bench", "sampling", "--model", "images/cifar",
            "--model-args", json.dumps({"weights": str(folder)}),
            "--batch-size", str(args.batch), "--warmup", "1", "--steps", str(args.steps),
            "--threads", str(args.threads),
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rust = json.loads(next(line for line in out.splitlines() if line.startswith("json: "))[6:])
        python_seconds = torch_step_seconds(unet, args.batch, 1, args.steps)

    rust_seconds = rust["seconds_per_step"]
    print(f"UNet2DModel, google/ddpm-cifar10-32 config, {parameters / 1e6:.1f} M parameters, random weights")
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.steps} steps after one warm-up")
    for name, seconds in [("flowgym (tch)", rust_seconds), ("diffusers (torch)", python_seconds)]:
        print(f"  {name:18s} {seconds:8.3f} s per step   {args.batch / (100 * seconds):7.3f} images/s at 100 steps")
    print(f"  ratio flowgym / diffusers (time per step): {rust_seconds / python_seconds:.3f}")


if __name__ == "__main__":
    main()
