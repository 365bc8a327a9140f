"""Guided sampling of the shipped model, every step guided against a limited interval of timesteps.

    python benchmarks/bench_guidance.py --device cpu --md benchmarks/results/cpu_guidance.md

One block (k = 2 frames) of --batch clips of the demo's held-out data, predicted from their 2 past
frames by the shipped model (`mcvd.pretrained`, 1.69M parameters, 32 x 32) as the demo samples it:
DDPM with its 20 steps, w = 2, eager, weights channels_last on the CPU. Providers, timed round-robin
in the same run: "every step" (each step one network call on the doubled batch, the baseline) and
"t <= HI" (only the steps with t <= HI guided, the others one call on the plain batch).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import Row, environment, markdown_table, measure_interleaved, write_csv  # noqa: E402

import mcvd  # noqa: E402
from mcvd import pretrained  # noqa: E402
from mcvd.data import StochasticMovingMNIST  # noqa: E402

BASELINE = "every step"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32, help="clips per block (the demo's guided batch: 32)")
    ap.add_argument("--his", type=int, nargs="+", default=[700, 500], help="upper ends of the intervals timed")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, cfg = pretrained.load("smmnist-demo-cpu", map_location=device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # as the demo samples it (mcvd.cli._common.inference_model)
    entry = pretrained.MODELS["smmnist-demo-cpu"]
    clips = StochasticMovingMNIST(4, split="test", seed=0, length=args.batch, image_size=32, digit_size=16)
    past = torch.stack([clips[i][:2] for i in range(args.batch)]).to(device)

    def block(interval):
        return lambda: mcvd.predict(model, past, cfg.num_frames, method="ddpm", steps=entry.sample_steps,
                                    guidance=entry.guidance, guidance_interval=interval,
                                    generator=torch.Generator(device).manual_seed(0))
    fns = {BASELINE: block(None), **{f"t <= {hi}": block((0, hi)) for hi in args.his}}
    timings = measure_interleaved(fns, device=args.device, warmup=1, reps=args.reps, max_time_s=600)
    shape = f"B{args.batch}xk{cfg.num_frames}x1x32x32"
    steps = entry.sample_steps
    timesteps = mcvd.SamplerConfig(method="ddpm", steps=steps).make_scheduler(model).timesteps.tolist()
    rows = []
    for name, (med, p20, p80, samples) in timings.items():
        hi = None if name == BASELINE else int(name.split()[-1])
        guided = steps if hi is None else sum(t <= hi for t in timesteps)
        rows.append(Row("guided_block", name, f"ddpmx{steps}, w={entry.guidance:g}", shape, args.device, med, p20,
                        p80, f"{guided} of {steps} steps guided; {med / steps:.1f} ms/step", samples))
    table = markdown_table(rows, BASELINE)
    print(environment(args.device))
    print(table)
    if args.csv:
        write_csv(rows, args.csv)
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"{environment(args.device)}\n\n{table}\n")


if __name__ == "__main__":
    main()
