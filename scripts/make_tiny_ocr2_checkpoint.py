"""Build a tiny random DeepSeek-OCR-2 checkpoint on transformers' own classes, for tests.

The checkpoint is ``DeepseekOcr2ForConditionalGeneration`` with every dimension shrunk (a few
hundred thousand parameters, built in about a second) and random weights from a fixed seed, saved
with a ``DeepseekOcr2Processor`` whose tokenizer has DeepSeek-OCR's special tokens (``<image>``,
the grounding tokens, ``<td>``/``</td>``, BOS/EOS/pad). The tokenizer is copied from a DeepSeek-OCR
checkpoint (by default the tiny v1 parity checkpoint in the shared data), so the two models' tiny
checkpoints read the same prompts.

Only the sizes are made up; the architecture, the image processor and the token arithmetic are
transformers' own, which is what docconv's OCR-2 engine is tested against.

    python scripts/make_tiny_ocr2_checkpoint.py OUT_DIR [--tokenizer-from DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER_SOURCE = REPO.parent / "shared" / "fixtures" / "deepseek-ocr-parity" / "models" / "seed15"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_SEED = 19

#: The real model's shapes shrunk; the real ones are transformers' ``DeepseekOcr2Config`` defaults.
#: The SAM input size stays 1024 (and tiles 768) so the processor's views and the 256/144 query
#: counts are the real ones; only widths and depths are small.
_SAM = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "global_attn_indexes": [1],
    "output_channels": 16,
    "downsample_channels": [24, 48],  # the last is the vision encoder's width
}
_ENCODER = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 8,  # the encoder reads embeddings only; its token table is never used
}
_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 3,
    "moe_intermediate_size": 32,
    "mlp_layer_types": ["dense", "sparse"],  # like the real model: dense first, MoE after
    "max_position_embeddings": 8192,
}


def copy_tokenizer(source: Path, destination: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    if not (destination / "tokenizer.json").is_file():
        raise SystemExit(f"{source} has no tokenizer.json; pass --tokenizer-from a DeepSeek-OCR checkpoint")


def build_tiny_checkpoint(
    out_dir: Path, tokenizer_from: Path = DEFAULT_TOKENIZER_SOURCE, seed: int = DEFAULT_SEED
) -> Path:
    """Write a tiny random OCR-2 checkpoint (config, weights, tokenizer, processor) to ``out_dir``."""
    import torch
    from transformers import (
        AutoTokenizer,
        DeepseekOcr2Config,
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2ImageProcessorPil,
        DeepseekOcr2Processor,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    copy_tokenizer(tokenizer_from, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    processor = DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer)
    text = dict(
        _TEXT,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = DeepseekOcr2Config(
        vision_config={"sam_config": _SAM, "encoder_config": _ENCODER},
        text_config=text,
        image_token_id=processor.image_token_id,
    )
    torch.manual_seed(seed)
    model = DeepseekOcr2ForConditionalGeneration(config).eval()
    _randomize(model, seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _randomize(model, seed: int) -> None:
    """Give every weight a visible random value: transformers initialises some (the router, the
    view separator, norms) to constants, and a tiny model with constant routing or separators would
    leave paths of the engine untested."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            parameter.copy_((noise * 0.2).to(parameter.dtype))
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or ".layer_norm" in name and name.endswith("weight"):
                parameter.add_(1.0)  # norms near 1 keep activations in range over the layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokenizer-from", type=Path, default=DEFAULT_TOKENIZER_SOURCE)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()
    print(build_tiny_checkpoint(args.out_dir, args.tokenizer_from, args.seed))


if __name__ == "__main__":
    main()
