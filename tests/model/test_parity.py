"""Parity with the official DeepSeek-OCR implementation on the tiny fixture checkpoints.

Every case directory under the fixture root (``DOCCONV_PARITY_FIXTURES`` overrides it) runs
through our processor and model in float32 on CPU and must reproduce what the official code
produced: exact ids, masks, crops and greedy tokens; embeddings and logits within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepseek_ocr import DeepseekOcrProcessor, load_model, plan_runtime
from deepseek_ocr.decoder import MoeRouter
from deepseek_ocr.generation import greedy_config

from ..conftest import PARITY, require_shared, shared_params

CASES = sorted(path for path in PARITY.glob("cases/*") if (path / "meta.json").is_file())
ATOL = RTOL = 1e-4


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}"
    )


@pytest.fixture(scope="module")
def checkpoints():
    loaded: dict[int, tuple] = {}

    def get(seed: int):
        if seed not in loaded:
            directory = PARITY / "models" / f"seed{seed}"
            model = load_model(directory, plan_runtime(device="cpu", dtype="float32", quant="none"))
            loaded[seed] = (model, DeepseekOcrProcessor.from_pretrained(directory))
        return loaded[seed]

    return get


@pytest.fixture(
    params=shared_params(CASES, "parity cases (cases/*/meta.json)", PARITY / "cases"), ids=lambda case: case.name
)
def case(request):
    directory: Path = request.param
    return json.loads((directory / "meta.json").read_text()), load_file(directory / "expected.safetensors")


def run_generate(model, inputs: dict, max_new_tokens: int, eos: int | None, no_repeat: int = 0, **extra):
    config = greedy_config(eos, pad_token_id=2, max_new_tokens=max_new_tokens)
    config.no_repeat_ngram_size = no_repeat
    for key, value in extra.items():
        setattr(config, key, value)
    with torch.inference_mode():
        return model.generate(**inputs, generation_config=config)


def test_official_case(case, checkpoints):
    meta, expected = case
    model, processor = checkpoints(meta["seed"])
    inputs = dict(processor([PARITY / "images" / meta["image"]], meta["prompt"], meta["mode"]))
    inputs.pop("vision_tokens"), inputs.pop("valid_vision_tokens")

    assert inputs["input_ids"][0].tolist() == expected["input_ids"].tolist()
    assert inputs["images_seq_mask"][0].tolist() == expected["images_seq_mask"].tolist()
    assert inputs["images_spatial_crop"].tolist() == expected["images_spatial_crop"].tolist()

    routes: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out: routes.append(out))
        for module in model.modules()
        if isinstance(module, MoeRouter)
    ]
    with torch.inference_mode():
        model_inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
        embeds = model.model.embed_inputs(**model_inputs)
        prefill = model(inputs_embeds=embeds, output_hidden_states=True)
    for hook in hooks:
        hook.remove()

    assert_close(embeds[0][inputs["images_seq_mask"][0]], expected["vision_embeds"], "vision embeddings")
    assert_close(prefill.logits[0], expected["prefill_logits"], "prefill logits")
    if "prefill_hidden_states" in expected:
        assert_close(
            torch.stack(prefill.hidden_states)[:, 0], expected["prefill_hidden_states"], "hidden states"
        )
    check_routing(routes, expected)
    check_vision_intermediates(model, inputs, expected)

    # 24 greedy tokens with KV cache, no EOS stop, no processors (fixture README §11).
    model.generation_config.eos_token_id = None
    greedy = run_generate(model, inputs, 24, eos=None, output_scores=True, return_dict_in_generate=True)
    length = inputs["input_ids"].shape[1]
    assert greedy.sequences[0, length:].tolist() == expected["greedy_ids"].tolist()
    assert_close(torch.stack(greedy.scores)[:, 0], expected["greedy_step_logits"], "greedy step logits")

    # The official infer() settings: full-sequence no-repeat n-gram 35 (eval) and 20 (stream), EOS stop.
    evaluated = run_generate(model, inputs, 96, eos=1, no_repeat=35)[0, length:]
    assert evaluated.tolist() == expected["infer_eval_ids"].tolist()
    streamed = run_generate(model, inputs, 96, eos=1, no_repeat=20)[0, length:]
    assert streamed.tolist() == expected["infer_stream_ids"].tolist()


def check_routing(routes: list[tuple[torch.Tensor, torch.Tensor]], expected: dict[str, torch.Tensor]) -> None:
    layers = sorted(
        int(key.split(".")[1].removeprefix("layer")) for key in expected if key.endswith(".topk_idx")
    )
    assert len(routes) == len(layers), "one routing decision per MoE layer in the prefill"
    for (weights, ids), layer in zip(routes, layers, strict=True):
        want_ids = expected[f"router.layer{layer}.topk_idx"]
        assert [set(row) for row in ids.tolist()] == [set(row) for row in want_ids.tolist()], (
            f"experts, layer {layer}"
        )
        got_weights = weights.sort(dim=-1, descending=True).values
        torch.testing.assert_close(
            got_weights, expected[f"router.layer{layer}.topk_weight"], atol=1e-5, rtol=0
        )


def check_vision_intermediates(model, inputs: dict, expected: dict[str, torch.Tensor]) -> None:
    with torch.inference_mode():
        if "vision.global.sam" in expected:
            sam = model.model.sam_model(inputs["pixel_values"])
            assert_close(sam, expected["vision.global.sam"], "SAM output (global view)")
            assert_close(
                model.model.vision_model(sam), expected["vision.global.clip"], "CLIP output (global view)"
            )
        if "vision.local.sam" in expected:
            assert_close(
                model.model.sam_model(inputs["pixel_values_tiles"]), expected["vision.local.sam"], "SAM tiles"
            )


def test_cases_were_found():
    require_shared(PARITY, "parity fixtures")
    assert CASES, f"{PARITY} has no cases/*/meta.json"
