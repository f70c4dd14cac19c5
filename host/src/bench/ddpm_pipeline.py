"""diffusers' DDPMPipeline throughput on a diffusers folder, for `flowgym-host bench sampling
--reference`: one untimed warm-up call of 2 steps, then the median of `repeats` timed calls of
`steps` denoising steps on a batch, on the CPU with `threads` threads. Prints one JSON line.

Usage: python ddpm_pipeline.py FOLDER BATCH STEPS THREADS REPEATS
"""
import json
import os
import statistics
import sys
import time

import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel


def main():
    folder, batch, steps, threads, repeats = sys.argv[1], *map(int, sys.argv[2:6])
    if threads > 0:
        torch.set_num_threads(threads)
    unet_dir = os.path.join(folder, "unet") if os.path.isdir(os.path.join(folder, "unet")) else folder
    sched_dir = (os.path.join(folder, "scheduler")
                 if os.path.isdir(os.path.join(folder, "scheduler")) else folder)
    unet = UNet2DModel.from_pretrained(unet_dir).eval()
    with open(os.path.join(sched_dir, "scheduler_config.json")) as f:
        name = json.load(f).get("_class_name", "DDPMScheduler")
    scheduler_class = DDIMScheduler if name == "DDIMScheduler" else DDPMScheduler
    scheduler = scheduler_class.from_pretrained(sched_dir)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pipe(batch_size=batch, num_inference_steps=2, generator=generator, output_type="np")
        times = []
        for _ in range(max(repeats, 1)):
            start = time.perf_counter()
            pipe(batch_size=batch, num_inference_steps=steps, generator=generator, output_type="np")
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(json.dumps({
        "pipeline": f"DDPMPipeline + {scheduler_class.__name__}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch,
        "steps": steps,
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "images_per_second": batch / seconds,
    }))


if __name__ == "__main__":
    main()
