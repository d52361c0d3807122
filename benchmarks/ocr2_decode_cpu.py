"""DeepSeek-OCR-2 CPU decoding speed: transformers' own forward vs docconv's decoder (a benchmark, not a test).

Builds a full-size DeepSeek-OCR-2 with random bfloat16 weights from the real config (the text
model is v1's, ``shared/reference/deepseek-ocr/config.json``: 1280 hidden, 12 layers, 64 experts
top-6, 2 shared, vocabulary 129280; the vision part is ``DeepseekOcr2Config``'s defaults but for
the encoder's sizes, :data:`DEEPENCODER_V2`), saves it
once as a safetensors checkpoint in ``--workdir`` (no download), then decodes the same prompt
greedily, batch 1, with each setting in turn:

* ``transformers``: ``DeepseekOcr2ForConditionalGeneration.generate`` in bfloat16 (its own forward);
* ``none``: :func:`deepseek_ocr.ocr2.load_ocr2_decoder` in bfloat16, quant none (the decoder's
  weights exponent-coded where the CPU kernel can, losslessly), CPU fast paths attached;
* ``int4``: the same with int4 weights.

Decode speed is tokens/s after the first generated token, exactly ``--new-tokens`` tokens (no
EOS), KV cache on; the prompt is ``--prompt-tokens`` random token ids (prefill is not timed).
One run per setting: compare figures from one run only.

    python benchmarks/ocr2_decode_cpu.py --threads 2 --new-tokens 32
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
REFERENCE_CONFIG = REPO.parent / "shared" / "reference" / "deepseek-ocr" / "config.json"
SETTINGS = ("transformers", "none", "int4")
#: OCR-2's vision encoder (shared/docs/deepseek-ocr.md 12.1: Qwen2-0.5B-style, 24 layers, 896 wide).
#: ``DeepseekOcr2Config``'s default ``encoder_config`` is ``Qwen2Config``'s generic 4096-wide,
#: 32-layer default (10.8B parameters), which is not the model and does not fit here; decoding
#: never reads the vision part, so only memory depends on this.
DEEPENCODER_V2 = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
}


def text_config_from_reference() -> dict:
    reference = json.loads(REFERENCE_CONFIG.read_text(encoding="utf-8"))
    from deepseek_ocr.ocr2 import SHARED_TEXT_KEYS

    text = {key: reference[key] for key in SHARED_TEXT_KEYS if key in reference}
    dense = reference.get("first_k_dense_replace", 1)
    text["mlp_layer_types"] = ["dense"] * dense + ["sparse"] * (text["num_hidden_layers"] - dense)
    return text


def build_checkpoint(directory: Path) -> Path:
    """A random full-size OCR-2 checkpoint (bfloat16), written once."""
    if (directory / "config.json").is_file():
        return directory
    from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

    config = DeepseekOcr2Config(
        text_config=text_config_from_reference(), vision_config={"encoder_config": DEEPENCODER_V2}
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(config)
    model.to(torch.bfloat16).to_empty(device="cpu")  # bfloat16 throughout: float32 would need 14 GB
    # Drawing 3.4 billion normals takes many minutes on two busy cores; every weight is a window
    # of one block of 2^24 draws at a random offset instead (same value distribution, which is
    # what the exponent coding's size and the kernels' speed depend on).
    generator = torch.Generator().manual_seed(0)
    block = torch.randn(1 << 24, generator=generator) * config.text_config.initializer_range
    block = torch.cat([block, block]).to(torch.bfloat16)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name:
                parameter.fill_(1.0)
                continue
            flat = parameter.view(-1)
            for start in range(0, flat.numel(), 1 << 24):
                count = min(1 << 24, flat.numel() - start)
                offset = int(torch.randint(0, 1 << 24, (1,), generator=generator))
                flat[start : start + count] = block[offset : offset + count]
    model.save_pretrained(directory)
    return directory


class StepTimes:
    """A generate streamer that stamps each generated token."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.stamps.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass

    def decode_rate(self) -> float:
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


def decode_rate(model, prompt: torch.Tensor, new_tokens: int, **kwargs) -> float:
    from deepseek_ocr.generation import greedy_config

    streamer = StepTimes()
    with torch.inference_mode():
        model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            generation_config=greedy_config(None, 0, new_tokens),
            streamer=streamer,
            **kwargs,
        )
    return streamer.decode_rate()


def fast_paths(model: torch.nn.Module) -> dict[str, int]:
    """How many modules run each CPU variant or kernel-format linear (none for transformers)."""
    from deepseek_ocr.cpu import CpuVariant
    from deepseek_ocr.cpu.linear import KernelLinear

    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, (CpuVariant, KernelLinear)):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def load(setting: str, checkpoint: Path):
    from deepseek_ocr.loading import RuntimePlan

    if setting == "transformers":
        from transformers import DeepseekOcr2ForConditionalGeneration

        return DeepseekOcr2ForConditionalGeneration.from_pretrained(
            checkpoint, dtype=torch.bfloat16
        ).eval(), {}
    from deepseek_ocr.cache import GrowingCache
    from deepseek_ocr.ocr2 import load_ocr2_decoder

    decoder = load_ocr2_decoder(checkpoint, RuntimePlan("cpu", torch.bfloat16, setting, "sdpa"))
    return decoder, {"cache": GrowingCache()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/docconv-ocr2-bench"))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from deepseek_ocr.loading import return_freed_memory

    started = time.perf_counter()
    checkpoint = build_checkpoint(args.workdir)
    print(
        json.dumps({"checkpoint": str(checkpoint), "seconds": round(time.perf_counter() - started, 1)}),
        flush=True,
    )
    vocab = json.loads((checkpoint / "config.json").read_text())["text_config"]["vocab_size"]
    prompt = torch.randint(3, vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    for setting in args.settings:
        started = time.perf_counter()
        model, kwargs = load(setting, checkpoint)
        loaded = time.perf_counter() - started
        rate = decode_rate(model, prompt, args.new_tokens, **kwargs)
        record = {"setting": setting, "load_s": round(loaded, 1), "decode_tok_s": round(rate, 2)}
        record.update(
            threads=torch.get_num_threads(), new_tokens=args.new_tokens, fast_paths=fast_paths(model)
        )
        print(json.dumps(record), flush=True)
        del model, kwargs
        gc.collect()
        return_freed_memory()


if __name__ == "__main__":
    main()
