"""`duet_jax.load_llava` (docs/API.md §3) on HF and converted directories."""
import subprocess
import sys

import numpy as np
import pytest

import duet_jax
from duet_jax.sharding import make_mesh
from tests.helpers.tiny_hf import assert_valid_rows_close, hf_logits, llava_batch, tiny_llava


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    hf = tiny_llava(text_layers=4)
    d = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(d)
    return hf, str(d)


def test_load_hf_and_converted_give_torch_logits(hf_dir, tmp_path):
    hf, d = hf_dir
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(10, 4))
    ref = hf_logits(hf, ids, mask, pixel_values=pixels)
    out = str(tmp_path / "conv")
    subprocess.run([sys.executable, "-m", "convert", "--src", d, "--dst", out], check=True,
                   capture_output=True)
    for path in (d, out):
        model = duet_jax.load_llava(path)
        assert_valid_rows_close(np.asarray(model.logits(ids, pixels, attention_mask=mask)),
                                ref, mask)


def test_preset_by_name_and_clear_errors(hf_dir):
    hf, d = hf_dir
    model = duet_jax.load_llava(d)
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(10, 4))
    with pytest.raises(ValueError, match="unknown reduction preset"):
        model.logits(ids, pixels, mask, reduction="llava15-duet-65")
    with pytest.raises(ValueError, match="exceeds the 16 patches"):
        model.logits(ids, pixels, mask, reduction="llava15-duet-64")
    cut = ids.copy()
    cut[0, 3] = 5          # one image-token id short
    with pytest.raises(ValueError, match="image_seq_length"):
        model.logits(cut, pixels, mask)
    with pytest.raises(ValueError, match="dtype"):
        duet_jax.load_llava(d, dtype="int8")
    with pytest.raises(FileNotFoundError):
        duet_jax.load_llava(d + "-missing")


def test_load_onto_mesh_matches_single_device(hf_dir):
    hf, d = hf_dir
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(10, 4))
    ref = np.asarray(duet_jax.load_llava(d).logits(ids, pixels, mask))
    mesh = make_mesh(1, 2, 4)
    model = duet_jax.load_llava(d, mesh=mesh)
    leaf = model.params["text"]["layers"][0]["mlp"]["up_proj"]["kernel"]
    assert len(leaf.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(model.logits(ids, pixels, mask)), ref, atol=1e-5)


def test_text_only_generation_skips_the_tower_and_matches_hf():
    """A batch without images runs no tower and drops no token (nothing to reduce), and
    answers as HF `generate` does without pixels, with or without a reduction asked for."""
    from transformers import LlavaForConditionalGeneration
    from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config
    from tests.helpers.tiny_checkpoint import cached_tiny_checkpoint
    from tests.helpers.tiny_hf import hf_greedy_per_sample
    ckpt = cached_tiny_checkpoint()
    hf = LlavaForConditionalGeneration.from_pretrained(ckpt).eval()
    model = duet_jax.load_llava(ckpt)
    batch = model.encode(["What is the capital of a small country?", "Say hi."])
    assert not batch["has_image"].any()
    ref = hf_greedy_per_sample(hf, batch["input_ids"], batch["attention_mask"], 5)
    duet = ReductionConfig("duet", Stage1Config(6, 3, 2), Stage2Config((1, 3), (0.5, 0.0)))
    for red in (None, duet):
        out = model.generate_batch(batch, max_new_tokens=5, reduction=red)
        assert out.forward.features.tokens.shape[1] == 0     # no tower ran
        np.testing.assert_array_equal(np.asarray(out.tokens), ref)
