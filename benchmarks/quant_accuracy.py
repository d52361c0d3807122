"""bfloat16 and the quantized settings against float32 on every parity fixture case (a measurement, not a test).

For each case of ``shared/fixtures/deepseek-ocr-parity`` (or ``DOCCONV_PARITY_FIXTURES``): the
cosine similarity of the first next-token logits with float32, and how many of the first 24
greedy tokens agree with float32. ``none`` is bfloat16 as docconv runs it on this CPU
(exponent-coded where the CPU kernel can), ``none-torch`` bfloat16 with the CPU kernel off.
``tests/model/test_quantization.py`` guards the figures on three cases.

    python benchmarks/quant_accuracy.py --quant none none-torch 8bit 4bit int4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from deepseek_ocr import DeepseekOcrProcessor, load_model, plan_runtime
from deepseek_ocr.cpu import library
from deepseek_ocr.generation import greedy_config

REPO = Path(__file__).resolve().parent.parent
PARITY = Path(os.environ.get("DOCCONV_PARITY_FIXTURES", REPO.parent / "shared/fixtures/deepseek-ocr-parity"))
TOKENS = 24


def greedy(model, inputs: dict) -> tuple[list[int], torch.Tensor]:
    config = greedy_config(None, pad_token_id=2, max_new_tokens=TOKENS)
    config.output_scores, config.return_dict_in_generate = True, True
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config)
    return out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), out.scores[0][0].float()


@contextlib.contextmanager
def kernel_switched_off(off: bool):
    """The CPU kernel unavailable while loading (bfloat16 then stays uncoded)."""
    if not off:
        yield
        return
    os.environ[library.ENV_SWITCH] = "0"
    library.load.cache_clear()
    try:
        yield
    finally:
        del os.environ[library.ENV_SWITCH]
        library.load.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", nargs="+", default=["none", "none-torch", "8bit", "4bit", "int4"])
    args = parser.parse_args()
    models: dict[tuple[int, str, str], object] = {}

    def model(seed: int, dtype: str, quant: str):
        if (seed, dtype, quant) not in models:
            directory = PARITY / "models" / f"seed{seed}"
            plan = plan_runtime(device="cpu", dtype=dtype, quant=quant.removesuffix("-torch"))
            with kernel_switched_off(quant.endswith("-torch")):
                models[seed, dtype, quant] = load_model(directory, plan)
        return models[seed, dtype, quant]

    rows: dict[tuple[str, int], list[tuple[float, int]]] = {}
    for case in sorted(p for p in (PARITY / "cases").iterdir() if p.is_dir()):
        meta = json.loads((case / "meta.json").read_text())
        processor = DeepseekOcrProcessor.from_pretrained(PARITY / "models" / f"seed{meta['seed']}")
        features = processor([PARITY / "images" / meta["image"]], meta["prompt"], meta["mode"])
        inputs = {k: v for k, v in dict(features).items() if k not in ("vision_tokens", "valid_vision_tokens")}
        ref_ids, ref_logits = greedy(model(meta["seed"], "float32", "none"), inputs)
        for quant in args.quant:
            ids, logits = greedy(model(meta["seed"], "bfloat16", quant), inputs)
            agreeing = next((i for i, (a, b) in enumerate(zip(ref_ids, ids, strict=True)) if a != b), TOKENS)
            cosine = F.cosine_similarity(ref_logits, logits, dim=0).item()
            rows.setdefault((quant, meta["seed"]), []).append((cosine, agreeing))

    print(f"| setting | min cosine | mean cosine | greedy tokens agreeing of {TOKENS} (per case) |")
    print("| --- | --- | --- | --- |")
    for (quant, seed), values in rows.items():
        cosines = [c for c, _ in values]
        agreeing = ", ".join(str(a) for _, a in values)
        print(f"| {quant}, seed {seed} | {min(cosines):.4f} | {statistics.mean(cosines):.4f} | {agreeing} |")


if __name__ == "__main__":
    main()
