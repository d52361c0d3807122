"""GrowingCache: the in-place KV cache gives exactly what transformers' DynamicCache gives."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from deepseek_ocr import load_model, plan_runtime
from deepseek_ocr.cache import GrowingCache, GrowingLayer
from deepseek_ocr.generation import greedy_config

from .test_quantization import case_inputs


def test_greedy_pages_are_identical_to_dynamic_cache_across_reallocations():
    directory, inputs = case_inputs("s15_base_square_md")  # 290 prompt tokens, buffer grows at 546
    model = load_model(directory, plan_runtime(device="cpu", dtype="float32", quant="none"))
    model.generation_config.eos_token_id = None
    config = greedy_config(None, pad_token_id=2, max_new_tokens=300)
    config.output_scores, config.return_dict_in_generate = True, True
    with torch.inference_mode():
        dynamic = model.generate(**inputs, generation_config=config, cache=DynamicCache())
        growing = model.generate(**inputs, generation_config=config, cache=GrowingCache())
    assert torch.equal(dynamic.sequences, growing.sequences)
    assert all(torch.equal(a, b) for a, b in zip(dynamic.scores, growing.scores, strict=True))


def test_layer_appends_in_place_and_survives_crop_and_batch_selection():
    layer = GrowingLayer()
    chunks = [torch.randn(2, 3, n, 4) for n in (5, 1, 1)]
    with torch.inference_mode():
        for chunk in chunks:
            keys, values = layer.update(chunk, -chunk)
        buffer = layer._key_buffer
        assert torch.equal(keys, torch.cat(chunks, dim=-2)) and torch.equal(values, -keys)
        assert keys.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()

        layer.crop(-2)
        keys, _ = layer.update(chunks[1], -chunks[1])
        assert torch.equal(keys, torch.cat([chunks[0], chunks[1]], dim=-2))
        assert layer._key_buffer is buffer  # cropped in place, no reallocation

        layer.batch_select_indices(torch.tensor([1]))
        keys, values = layer.update(chunks[2][1:], -chunks[2][1:])
        assert keys.shape == (1, 3, 7, 4)
        assert torch.equal(keys, torch.cat([chunks[0][1:], chunks[1][1:], chunks[2][1:]], dim=-2))
