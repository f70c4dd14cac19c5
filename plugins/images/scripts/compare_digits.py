#!/usr/bin/env python3
"""`images/digits` base samples against diffusers' `DDPMPipeline` on the same weights, judged by
the project's digit classifier: class histogram (total variation distance to the training
data's) and mean confidence (the classifier's top probability), at 50 and 100 steps.

Flow Gym's samples come from `flowgym-host sample --model images/digits -n N --steps S` (the
memoryless SDE of the host with its default time grid, clipping as the scheduler config says);
diffusers' from `DDPMPipeline(unet, DDPMScheduler.from_pretrained(folder))` with
`num_inference_steps=S` (its own ancestral sampler, `clip_sample` from the same config). The
classifier is `plugins/images/weights/digit-classifier`, evaluated here in PyTorch (the same
layers as `flowgym_images::models::digit_classifier`).

    cargo xtask cargo build --release
    ~/.cache/flowgym/pyref/bin/python plugins/images/scripts/compare_digits.py [--n 1000]
"""
import argparse
import gzip
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "plugins/images/weights/digits"
CLASSIFIER = ROOT / "plugins/images/weights/digit-classifier"
DATA = ROOT / "plugins/images/data/digits.csv.gz"


def classifier():
    w = load_file(CLASSIFIER / "model.safetensors")

    def log_probs(x):  # x: [n, 1, 8, 8] in [0, 1]
        h = x * 2 - 1
        h = F.relu(F.conv2d(h, w["conv1.weight"], w["conv1.bias"], padding=1))
        h = F.max_pool2d(F.relu(F.conv2d(h, w["conv2.weight"], w["conv2.bias"], padding=1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, w["conv3.weight"], w["conv3.bias"], padding=1)), 2)
        h = F.relu(F.linear(h.flatten(1), w["fc1.weight"], w["fc1.bias"]))
        return F.log_softmax(F.linear(h, w["fc2.weight"], w["fc2.bias"]), -1)

    return log_probs


def statistics(name, images, log_probs, reference=None):
    with torch.no_grad():
        p = log_probs(images.float()).exp()
    top = p.argmax(-1)
    hist = torch.bincount(top, minlength=10).double() / len(top)
    row = {
        "samples": name,
        "n": len(top),
        "histogram": [round(v, 4) for v in hist.tolist()],
        "mean_confidence": round(p.max(-1).values.mean().item(), 4),
    }
    if reference is not None:
        row["tv_to_data"] = round(0.5 * (hist - reference).abs().sum().item(), 4)
    return row, hist


def flowgym(n, steps, out):
    host = ROOT / "target/release/flowgym-host"
    subprocess.run(
        [str(host), "sample", "--model", "images/digits", "-n", str(n), "--steps", str(steps),
         "--seed", "1", "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return load_file(out / "samples.safetensors")["sample.x"]


def diffusers(n, steps):
    unet = UNet2DModel.from_pretrained(DIGITS).eval()
    scheduler = DDPMScheduler.from_pretrained(DIGITS)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=n, num_inference_steps=steps, generator=torch.Generator().manual_seed(1),
               output_type="np").images
    return torch.from_numpy(np.asarray(out)).permute(0, 3, 1, 2)  # [n, 1, 8, 8] in [0, 1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    log_probs = classifier()
    rows = np.loadtxt(gzip.open(DATA), delimiter=",")
    data = torch.from_numpy(rows[:, :64] / 16.0).float().view(-1, 1, 8, 8)
    row, reference = statistics("training data", data, log_probs)
    table = [row]
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (50, 100):
            table.append(statistics(f"Flow Gym, {steps} steps",
                                    flowgym(args.n, steps, Path(tmp) / str(steps)),
                                    log_probs, reference)[0])
            table.append(statistics(f"diffusers DDPMPipeline, {steps} steps",
                                    diffusers(args.n, steps), log_probs, reference)[0])
    print(f"{'samples':<34} {'n':>5} {'TV to data':>10} {'confidence':>10}  class histogram (0-9)")
    for r in table:
        tv = f"{r['tv_to_data']:.3f}" if "tv_to_data" in r else "-"
        hist = " ".join(f"{v:.3f}" for v in r["histogram"])
        print(f"{r['samples']:<34} {r['n']:>5} {tv:>10} {r['mean_confidence']:>10.3f}  {hist}")
    print("json:", json.dumps(table))


if __name__ == "__main__":
    main()
