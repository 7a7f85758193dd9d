"""CLIP text tower + visual projection against HF PyTorch (docs/BASELINES.md §4)."""
import numpy as np
import pytest
import torch

from duet_jax.checkpoints.clip_text import load_clip_text
from duet_jax.checkpoints.reader import CheckpointError
from duet_jax.models.clip_text import CLIPTextTower, image_embeds
from tests.helpers.tiny_clip import build_tiny_clip


@pytest.mark.parametrize("legacy", [True, False])
def test_text_tower_matches_hf(tmp_path, legacy):
    from transformers import CLIPModel, CLIPTokenizerFast
    path = build_tiny_clip(str(tmp_path / "clip"), eos_legacy=legacy)
    cfg, params = load_clip_text(path, vision_hidden=32)
    hf = CLIPModel.from_pretrained(path).eval()
    tok = CLIPTokenizerFast.from_pretrained(path)
    enc = tok(["what is the color of the cat?", "a"], padding="max_length", max_length=77,
              return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids[0, 0] == tok.bos_token_id and mask[1].sum() == 3    # BOS a EOS, then padding
    ours = np.asarray(CLIPTextTower(cfg).apply(params["clip_text"], ids, mask))
    with torch.no_grad():
        out = hf.text_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        ref = hf.text_projection(out.pooler_output).numpy()
    assert ours.shape == (2, 16)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)

    patches = np.random.default_rng(0).normal(size=(2, 4, 32)).astype(np.float32)
    got = np.asarray(image_embeds(_ln(params, path), params["clip_projection"], patches, 1e-5))
    with torch.no_grad():
        vm = hf.vision_model
        want = hf.visual_projection(vm.post_layernorm(torch.tensor(patches))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _ln(params, path):
    """The CLIP dir's own vision post_layernorm (in LLaVA it comes from the LLaVA tower)."""
    from safetensors.numpy import load_file
    import glob
    w = load_file(glob.glob(f"{path}/*.safetensors")[0])
    return {"scale": w["vision_model.post_layernorm.weight"],
            "bias": w["vision_model.post_layernorm.bias"]}


def test_wrong_width_is_one_line(tmp_path):
    path = build_tiny_clip(str(tmp_path / "clip"))
    with pytest.raises(CheckpointError, match="visual_projection.weight.*shape"):
        load_clip_text(path, vision_hidden=64)
