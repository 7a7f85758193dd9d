"""LLaVA-NeXT checkpoints: HF -> duet_jax -> HF is bit-exact (image_newline and
image_grid_pinpoints included), the export loads in transformers with no missing or
unexpected keys, and NeXT/1.5 weight mix-ups fail with one clear line."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from duet_jax.checkpoints import CheckpointError, load_params, plan_conversion
from duet_jax.models.anyres import LlavaNextConfig
from tests.checkpoints.test_convert import assert_bit_exact
from tests.helpers.tiny_next import PINPOINTS, next_batch, SIZES, tiny_llava_next


def _logits(model, batch):
    import torch
    ids, mask, pixels, sizes = batch
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     pixel_values=torch.tensor(pixels).to(model.dtype),
                     image_sizes=torch.tensor(sizes)).logits


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, dtype):
    import torch
    from transformers import LlavaNextForConditionalGeneration

    import convert

    model = tiny_llava_next(text_layers=2, kv_heads=2).to(getattr(torch, dtype))
    src, out, back = (str(tmp_path / n) for n in ("src", "jax", "back"))
    model.save_pretrained(src, max_shard_size="200KB")       # sharded source
    cfg, params = load_params(src)
    assert isinstance(cfg, LlavaNextConfig) and cfg.image_grid_pinpoints == tuple(map(tuple, PINPOINTS))
    np.testing.assert_array_equal(
        np.asarray(params["image_newline"], np.float32),
        model.model.image_newline.detach().float().numpy())
    convert.convert_to_orbax(src, out, progress=False)
    again, p2 = load_params(out)
    assert again == cfg
    info = convert.export_hf(out, back, max_shard_bytes=50_000, progress=False)
    assert info["shards"] > 1
    assert_bit_exact(src, back)
    with open(os.path.join(back, "config.json")) as f:
        exported = json.load(f)
    assert exported["model_type"] == "llava_next"
    assert exported["image_grid_pinpoints"] == PINPOINTS
    reloaded, info = LlavaNextForConditionalGeneration.from_pretrained(
        back, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.dtype == model.dtype
    batch = next_batch(model, SIZES[:2], (5, 3))
    # same loading path on both sides (a cast in-memory model keeps fp32-made buffers)
    original = LlavaNextForConditionalGeneration.from_pretrained(src, attn_implementation="eager")
    assert torch.equal(_logits(reloaded.eval(), batch), _logits(original.eval(), batch))


def test_newline_mixups_fail_clearly(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = tiny_llava_next()
    src = str(tmp_path / "next")
    model.save_pretrained(src)
    weights = load_file(os.path.join(src, "model.safetensors"))
    # a NeXT config whose weights lack image_newline
    missing = tmp_path / "missing"
    missing.mkdir()
    save_file({k: v for k, v in weights.items() if k != "image_newline"},
              str(missing / "model.safetensors"))
    (missing / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    with pytest.raises(CheckpointError, match="missing 1 weights.*image_newline"):
        plan_conversion(str(missing))
    # NeXT weights under a LLaVA-1.5 config: image_newline is unexpected
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    save_file(weights, str(wrong / "model.safetensors"))
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg.update(model_type="llava", architectures=["LlavaForConditionalGeneration"])
    cfg.pop("image_grid_pinpoints")
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unexpected weights: image_newline"):
        plan_conversion(str(wrong))
