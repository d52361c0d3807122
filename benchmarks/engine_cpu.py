"""CPU speed and memory of the full-size DeepSeek-OCR model with random weights (a benchmark, not a test).

Builds the official full-size config (``shared/reference/deepseek-ocr/config.json``) with random
bfloat16 weights, saves it once as a safetensors checkpoint in ``--workdir`` (no download), then
measures each setting in a fresh process through the real loading path:

* vision: seconds to encode one page (SAM + CLIP + projector + scatter), base 1024x1024 and
  gundam 1700x2200 (6 tiles + global view);
* prefill: decoder seconds over the base-mode prompt (290 tokens);
* decode: tokens/s after the first token, batch 1 and batch 4 (aggregate), with the default
  repetition guard (n-gram 30, window 90), KV cache, greedy, exactly ``--new-tokens`` tokens;
* peak RSS: sampled every 20 ms while pages are read (model resident; the first timed page
  included, there is no warm-up page): during the base-mode batch-1 runs (the reference's
  setting), over all runs (gundam and batch 4 included), and the process maximum (loading
  included);
* memory bandwidth: one streaming read of 1 GiB, the ceiling for batch-1 decoding.

Usage (2 threads, as the reference figures in shared/benchmarks/reference-cpu.md):

    python benchmarks/engine_cpu.py --quant none none-torch 8bit 4bit int4 --threads 2 --new-tokens 64

``--dtype`` (default ``auto``: what docconv picks on this CPU, bfloat16 where it has native
bfloat16, else float32 with the decoder's bfloat16 weights kept coded) and ``--variant`` (the
CPU kernel's variant, with torch held to the same instruction sets: ``--variant avx2`` measures
on an AVX-512 machine what an AVX2-only CPU runs) choose what runs on any CPU kind.

Figures are medians of ``--reps`` repetitions; compare settings measured in one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REFERENCE_CONFIG = SHARED / "reference" / "deepseek-ocr" / "config.json"
FIXTURES = SHARED / "fixtures" / "deepseek-ocr-parity"
PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def build_random_checkpoint(directory: Path) -> None:
    """Official config + random bf16 weights + the fixture tokenizer (prompt ids are valid in the full vocab)."""
    import torch

    from deepseek_ocr import DeepseekOcrConfig, DeepseekOcrForConditionalGeneration

    if (directory / "model.safetensors").is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    config = DeepseekOcrConfig.from_pretrained(REFERENCE_CONFIG.parent)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = DeepseekOcrForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="20GB")
    write_full_vocab_tokenizer(directory)
    print(f"built random checkpoint in {time.perf_counter() - started:.0f} s: {directory}", file=sys.stderr)


def write_full_vocab_tokenizer(directory: Path) -> None:
    """The fixture's tiny BPE with its special tokens moved to the real ids (<image> = 128815, ...).

    The real tokenizer.json is not available offline; prompt text ids stay small, which changes
    nothing about speed: the cost is in the image tokens and the full-size vocabulary head.
    """
    real_ids = {
        entry["content"]: int(token_id)
        for token_id, entry in json.loads((REFERENCE_CONFIG.parent / "tokenizer_config.json").read_text())[
            "added_tokens_decoder"
        ].items()
    }
    tokenizer = json.loads((FIXTURES / "tokenizer" / "tokenizer.json").read_text())
    for token in tokenizer["added_tokens"]:
        token["id"] = real_ids.get(token["content"], token["id"])
    # tokenizers renumbers added tokens past the end of the vocabulary: fill the gap with placeholders.
    vocab = tokenizer["model"]["vocab"]
    taken = {token["id"] for token in tokenizer["added_tokens"]}
    for token_id in range(len(vocab), max(taken) + 1):
        if token_id not in taken:
            vocab[f"<placeholder_{token_id}>"] = token_id
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(REFERENCE_CONFIG.parent / name, directory / name)


class RssSampler:
    """Maximum resident set size seen while active (20 ms period)."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(checkpoint: Path, setting: str, reps: int, new_tokens: int, dtype: str) -> dict:
    import torch
    from transformers import GenerationConfig, LogitsProcessorList
    from transformers.generation.streamers import BaseStreamer

    from deepseek_ocr import DeepseekOcrProcessor, SlidingWindowNoRepeatNGram, load_model, plan_runtime
    from deepseek_ocr.cache import GrowingCache

    started = time.perf_counter()
    quant = setting.removesuffix("-torch")
    plan = plan_runtime(device="cpu", dtype=dtype, quant=quant)
    model = load_model(checkpoint, plan)
    load_seconds = time.perf_counter() - started
    processor = DeepseekOcrProcessor.from_pretrained(checkpoint)
    base = strip_counts(processor([FIXTURES / "images" / "square_1024x1024.png"], PROMPT, "base"))
    gundam = strip_counts(processor([FIXTURES / "images" / "page_1700x2200.png"], PROMPT, "gundam"))
    batch4 = strip_counts(processor([FIXTURES / "images" / "square_1024x1024.png"] * 4, PROMPT, "base"))

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def decode_rate(inputs: dict) -> float:
        length = inputs["input_ids"].shape[1]
        # Exactly new_tokens, without EOS: min_new_tokens would add a processor that scans the
        # whole vocabulary every step (~1.3 ms here), which no user's decoding runs.
        model.generation_config.eos_token_id = None
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=2,
        )
        guard = LogitsProcessorList([SlidingWindowNoRepeatNGram(30, 90, length, [128821, 128822])])
        stamps = Stamps()
        model.generate(
            **inputs,
            generation_config=config,
            logits_processor=guard,
            streamer=stamps,
            cache=GrowingCache(),
        )
        # stamps[0] is the prompt, stamps[1] the first token (end of prefill).
        assert len(stamps.times) == new_tokens + 1, f"generated {len(stamps.times) - 1} tokens, not {new_tokens}"
        return inputs["input_ids"].shape[0] * (new_tokens - 1) / (stamps.times[-1] - stamps.times[1])

    results: dict[str, list[float]] = {
        k: [] for k in ("vision_base", "vision_gundam", "prefill", "decode1", "decode4")
    }
    with torch.inference_mode(), RssSampler() as rss:
        for _ in range(reps):  # one base-mode page at batch 1, the reference's setting
            results["vision_base"].append(timed(lambda: model.model.embed_inputs(**without_mask(base))))
            embeds = model.model.embed_inputs(**without_mask(base))
            results["prefill"].append(timed(lambda e=embeds: model(inputs_embeds=e, logits_to_keep=1)))
            results["decode1"].append(decode_rate(base))
        peak_base = rss.peak
        for _ in range(reps):
            results["vision_gundam"].append(timed(lambda: model.model.embed_inputs(**without_mask(gundam))))
            results["decode4"].append(decode_rate(batch4))
    summary = {key: statistics.median(values) for key, values in results.items()}
    summary.update(
        quant=setting,
        dtype=plan.dtype_name,
        load_seconds=load_seconds,
        peak_rss_base_gib=peak_base / 2**30,
        peak_rss_gib=rss.peak / 2**30,
        max_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        raw=results,
        threads=torch.get_num_threads(),
    )
    return summary


def strip_counts(features) -> dict:
    return {k: v for k, v in dict(features).items() if k not in ("vision_tokens", "valid_vision_tokens")}


def without_mask(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def memory_bandwidth_gbs() -> float:
    """GB/s of one streaming read of 1 GiB with the configured threads (median of 3)."""
    import torch

    data = torch.ones(2**28, dtype=torch.float32)
    return 2**30 / 1e9 / statistics.median(timed(data.sum) for _ in range(3))


QUANT_NAMES = {
    "none": "lossless (decoder exponent-coded, C kernel)",
    "none-torch": "lossless (torch, kernel off)",
    "8bit": "int8 (bnb)",
    "4bit": "nf4 (bnb, double quant)",
    "int4": "int4 (C kernel, groups of 64)",
}

#: Settings measured with the CPU kernel switched off (``DEEPSEEK_OCR_CPU_KERNEL=0``).
WITHOUT_KERNEL = ("none-torch",)


def cpu_kernel_switch() -> str:
    from deepseek_ocr.cpu import library

    return library.ENV_SWITCH


def report(rows: list[dict], bandwidth: float, variant: str) -> str:
    lines = [
        f"Streaming read bandwidth: {bandwidth:.1f} GB/s. CPU kernel variant: {variant}.",
        "",
        "| setting | dtype | vision base (s) | vision gundam (s) | prefill 290 tok (s) | decode b1 (tok/s) | decode b4 (tok/s, aggregate) | b4/b1 | peak RSS base b1 (GiB) | peak RSS all (GiB) | process max RSS (GiB) | load (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = QUANT_NAMES[r["quant"]]
        lines.append(
            f"| {name} | {r['dtype']} | {r['vision_base']:.2f} | {r['vision_gundam']:.2f} | {r['prefill']:.2f} | {r['decode1']:.1f} | "
            f"{r['decode4']:.1f} | {r['decode4'] / r['decode1']:.2f} | {r['peak_rss_base_gib']:.2f} | "
            f"{r['peak_rss_gib']:.2f} | {r['max_rss_gib']:.2f} | "
            f"{r['load_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quant", nargs="+", default=list(QUANT_NAMES), choices=list(QUANT_NAMES)
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/docconv-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--variant", help="the CPU kernel variant (default: the best this CPU runs)")
    parser.add_argument("--worker", choices=list(QUANT_NAMES), help=argparse.SUPPRESS)
    args = parser.parse_args()

    from deepseek_ocr.cpu import library

    if args.variant and not args.worker:  # the workers, fresh processes, start with it
        os.environ.update({library.VARIANT_SWITCH: args.variant, **library.TORCH_LIMITS.get(args.variant, {})})
    import torch

    torch.set_num_threads(args.threads)
    checkpoint = args.workdir / "deepseek-ocr-random"
    if args.worker:
        print(json.dumps(measure(checkpoint, args.worker, args.reps, args.new_tokens, args.dtype)))
        return
    build_random_checkpoint(checkpoint)
    bandwidth = memory_bandwidth_gbs()
    rows = []
    for quant in args.quant:
        command = [sys.executable, __file__, "--worker", quant, "--workdir", str(args.workdir)]
        command += [
            "--threads",
            str(args.threads),
            "--reps",
            str(args.reps),
            "--new-tokens",
            str(args.new_tokens),
            "--dtype",
            args.dtype,
        ]
        environment = {**os.environ, **({cpu_kernel_switch(): "0"} if quant in WITHOUT_KERNEL else {})}
        done = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(report(rows, bandwidth, library.chosen_variant()))


if __name__ == "__main__":
    main()
