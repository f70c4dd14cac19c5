#!/usr/bin/env python3
"""Seconds per Value Matching iteration on the toy: a PyTorch reference loop against the host.

The reference is the loop written the way a PyTorch user writes it: the toy's closed-form
velocity (0.5 N(0, 1) + 0.5 N(3, 0.4^2) on the optimal-transport path), the binary reward on
[0, 1] at scale 5, the memoryless SDE with 100 Euler-Maruyama steps from t = 0.02, the control
-s * lambda * grad v from autograd at every step, the cost-to-go, and one Adam step (lr 1e-3,
clip 1) on the weighted squared loss; the value network is the host's MLP (one feature plus a
64-d sinusoidal time embedding, 3 x 128 SiLU, zero-initialised output; its first layer also
reads `[x, alpha(t)] / beta(t)` through zero-initialised weights). It runs in eager mode,
as the Python original does.

The host's figure is `flowgym-host bench vm` on the same loop (batch 128, 100 steps). Blocks of
the two alternate, so that both see the same machine load, and the ratio of medians is printed.

    ~/.cache/flowgym/pyref/bin/python host/scripts/vm_speed.py --host target/release/flowgym-host

Needs torch 2.13 (the libtorch the host links).
"""

import argparse
import json
import math
import statistics
import subprocess
import time

import torch
from torch import nn

LAMBDA, STEPS, BATCH, T0 = 5.0, 100, 128, 0.02


def sinusoidal(t, dim=64, low=0.1, high=20.0):
    half = dim // 2
    ratio = math.log(high / low) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * ratio) * (2 * math.pi * low)
    args = t.view(-1, 1) * freqs.view(1, -1)
    return torch.cat([args.sin(), args.cos()], dim=1)


class Value(nn.Module):
    def __init__(self):
        super().__init__()
        layers, width = [], 1 + 64
        for _ in range(3):
            layers += [nn.Linear(width, 128), nn.SiLU()]
            width = 128
        out = nn.Linear(width, 1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.first = layers[0]
        self.scaled = nn.Linear(2, 128, bias=False)
        nn.init.zeros_(self.scaled.weight)
        self.rest = nn.Sequential(*layers[1:], out)

    def forward(self, x, t):
        # alpha = t and beta = 1 - t on the optimal-transport path, beta floored as the host
        # floors it.
        alpha = t.view(-1, 1)
        inverse = 1.0 / torch.sqrt((1.0 - alpha) ** 2 + 1e-4)
        scaled = self.scaled(torch.cat([x, alpha], dim=1) * inverse)
        h = self.first(torch.cat([x, sinusoidal(t)], dim=1)) + scaled
        return self.rest(h).view(-1)


MEANS = torch.tensor([[0.0, 3.0]])
VARIANCES = torch.tensor([[1.0, 0.16]])
LOG_WEIGHTS = torch.log(torch.tensor([[0.5, 0.5]]))


def velocity(x, t):
    variance = VARIANCES * t * t + (1 - t) ** 2
    deviation = x - MEANS * t
    log_density = LOG_WEIGHTS - 0.5 * variance.log() - deviation.square() / (2 * variance)
    posterior = log_density.softmax(dim=1)
    component = MEANS + (VARIANCES * t - (1 - t)) / variance * deviation
    return (posterior * component).sum(dim=1, keepdim=True)


def iteration(value, adam, seed):
    grid = [T0 + (1 - T0) * k / STEPS for k in range(STEPS + 1)]
    torch.manual_seed(seed)
    x = torch.randn(BATCH, 1)
    states, costs, s2dt = [], [], []
    for k in range(STEPS):
        t, dt = grid[k], grid[k + 1] - grid[k]
        kappa, eta = 1 / t, (1 - t) / t
        s = math.sqrt(2 * eta)
        with torch.no_grad():
            f = velocity(x, t)
        xg = x.detach().requires_grad_(True)
        v = value(xg, torch.full((BATCH,), t))
        (grad,) = torch.autograd.grad(v.sum(), xg)
        u = -s * LAMBDA * grad
        with torch.no_grad():
            costs.append(0.5 * u.square().sum(dim=1))
            drift = -kappa * x + 2 * f + s * u
            states.append(x)
            x = x + drift * dt + torch.randn_like(x) * (math.sqrt(dt) * s)
        s2dt.append(s * s * dt)
    with torch.no_grad():
        reward = ((x >= 0) & (x <= 1)).float().view(-1)
        dt = torch.tensor([grid[k + 1] - grid[k] for k in range(STEPS)]).view(-1, 1)
        cost = torch.stack(costs) * dt
        targets = ((cost.flip(0).cumsum(0).flip(0) - reward.view(1, -1) * LAMBDA) / LAMBDA).view(-1)
        remaining, weights = 0.0, [0.0] * STEPS
        for k in reversed(range(STEPS)):
            remaining += s2dt[k]
            weights[k] = 1 / (1 + 0.5 * remaining)
        times = torch.tensor(grid[:STEPS]).repeat_interleave(BATCH)
        weights = torch.tensor(weights).repeat_interleave(BATCH)
        all_states = torch.cat(states)
    adam.zero_grad()
    loss = ((value(all_states, times) - targets).square() * weights).sum() / (STEPS * BATCH)
    loss.backward()
    nn.utils.clip_grad_norm_(value.parameters(), 1.0)
    adam.step()


def python_block(iterations, seed):
    torch.manual_seed(0)
    value = Value()
    adam = torch.optim.Adam(value.parameters(), lr=1e-3)
    iteration(value, adam, seed)  # warm-up
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        iteration(value, adam, seed + i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def host_block(host, iterations):
    out = subprocess.run(
        [host, "bench", "vm", "--iterations", str(iterations)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(l for l in out.splitlines() if l.startswith("json: "))
    return json.loads(line[len("json: "):])["seconds_per_iteration"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="target/release/flowgym-host")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument(
        "--python-threads",
        type=int,
        default=0,
        help="torch.set_num_threads for the reference (0: PyTorch's default, as its users run it)",
    )
    args = parser.parse_args()
    if args.python_threads > 0:
        torch.set_num_threads(args.python_threads)
    python, host = [], []
    for r in range(args.rounds):
        python.append(python_block(args.iterations, 100 * r))
        host.append(host_block(args.host, args.iterations))
        print(f"round {r}: python {python[-1]:.4f} s, host {host[-1]:.4f} s per iteration")
    p, h = statistics.median(python), statistics.median(host)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"median seconds per iteration: python reference {p:.4f}, host {h:.4f}; ratio host/python {h / p:.3f}")


if __name__ == "__main__":
    main()
