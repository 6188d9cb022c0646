"""PyTorch side of scripts/bench_vs_torch.sh: the seed's ContextUnet (the
architecture of tests/fixtures/gen_unet.py, imported from there so both stay
the same) with n_feat 64, 3x16x16, n_cfeat 5.

Usage: /usr/bin/python3 scripts/bench_torch.py THREADS TRAIN_STEPS WARMUP SAMPLE_RUNS [SAMPLE_N]
TRAIN_STEPS 0 skips training; SAMPLE_RUNS 0 skips sampling; SAMPLE_N defaults to 32.
Prints "key value" lines: train_ms, sample_ms, peak_rss_mb.
"""
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures"))
from gen_unet import ContextUnet, schedule  # noqa: E402


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    n_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    n_sample = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    sample_n = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ContextUnet(3, n_feat=64, n_cfeat=5, height=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    B = 100
    x = torch.randn(B, 3, 16, 16, generator=g)
    noise = torch.randn(B, 3, 16, 16, generator=g)
    t = torch.rand(B, 1, 1, 1, generator=g)
    c = torch.rand(B, 5, generator=g)

    model.train()
    times = []
    for i in range(warmup + n_steps if n_steps > 0 else 0):
        t0 = time.perf_counter()
        pred = model(x, t, c)
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    if times:
        print("train_ms %.3f" % (statistics.median(times) * 1000))
        print("train_loss %.6f" % loss.item())

    # the seed's denoise_ddim: 25 steps of T = 500, sample_n images, null context
    model.eval()
    b_t, a_t, ab_t = schedule()
    T, n = 500, 25
    step = T // n
    stimes = []
    for r in range(1 + n_sample if n_sample > 0 else 0):
        t0 = time.perf_counter()
        with torch.no_grad():
            xs = torch.randn(sample_n, 3, 16, 16, generator=g)
            for i in range(T, 0, -step):
                tt = torch.full((sample_n, 1, 1, 1), i / T)
                eps = model(xs, tt)
                ab, ab_prev = ab_t[i], ab_t[i - step]
                x0_pred = ab_prev.sqrt() / ab.sqrt() * (xs - (1 - ab).sqrt() * eps)
                xs = x0_pred + (1 - ab_prev).sqrt() * eps
        dt = time.perf_counter() - t0
        if r >= 1:
            stimes.append(dt)
    if stimes:
        print("sample_ms %.3f" % (statistics.median(stimes) * 1000))
        print("sample_absmean %.6f" % xs.abs().mean().item())
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                print("peak_rss_mb %.1f" % (int(line.split()[1]) / 1024))


if __name__ == "__main__":
    main()
