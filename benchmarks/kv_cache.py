"""Decode step time against context length: transformers' DynamicCache vs GrowingCache (a benchmark).

Uses the full-size random checkpoint that ``engine_cpu.py`` builds (run that first). For each
context length, one process prefills a text prompt of that length and times single-token decode
steps with each cache, alternating the two so that machine noise hits both alike.

    python benchmarks/kv_cache.py --quant int4 --contexts 300 1500 3000 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from deepseek_ocr import load_model, plan_runtime
from deepseek_ocr.cache import GrowingCache


def step_milliseconds(model, cache_type, context: int, steps: int) -> list[float]:
    ids = torch.randint(3, 1000, (1, context))
    cache = cache_type()
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    times = []
    for position in range(context, context + steps):
        started = time.perf_counter()
        out = model(
            input_ids=token,
            cache=cache,
            use_cache=True,
            position_ids=torch.tensor([[position]]),
            logits_to_keep=1,
        )
        token = out.logits[:, -1:].argmax(-1)
        times.append((time.perf_counter() - started) * 1e3)
    return times[3:]  # the first steps warm up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/docconv-bench"))
    parser.add_argument("--quant", default="int4", choices=["none", "8bit", "4bit", "int4"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[300, 1500, 3000])
    parser.add_argument("--steps", type=int, default=23)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(
        args.workdir / "deepseek-ocr-random", plan_runtime(device="cpu", dtype="bfloat16", quant=args.quant)
    )
    print(f"quant {args.quant}: median decode step (ms) by context length\n")
    print("| context (tokens) | DynamicCache | GrowingCache | ratio |")
    print("|---|---|---|---|")
    with torch.inference_mode():
        for context in args.contexts:
            samples: dict[str, list[float]] = {"dynamic": [], "growing": []}
            for _ in range(args.rounds):
                samples["dynamic"] += step_milliseconds(model, DynamicCache, context, args.steps)
                samples["growing"] += step_milliseconds(model, GrowingCache, context, args.steps)
            dynamic, growing = (statistics.median(samples[k]) for k in ("dynamic", "growing"))
            print(f"| {context} | {dynamic:.1f} | {growing:.1f} | {growing / dynamic:.2f} |", flush=True)


if __name__ == "__main__":
    main()
