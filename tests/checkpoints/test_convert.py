"""Checkpoint conversion: layouts agree, round trips are bit-exact, bad input fails clearly.

The references are the PyTorch weights themselves (spot checks of every
transform kind), `LlavaForConditionalGeneration.from_pretrained` on the export
(same logits as the original model), and the Flax model's own `init` tree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from duet_jax.checkpoints import CheckpointError, load_params, plan_conversion, read_params
from duet_jax.checkpoints.orbax_io import flatten_tree
from tests.checkpoints.conftest import (IMAGE_TOKEN, VOCAB, canonical_hf, tiny_model,
                                        write_clip_full, write_original)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def host_params(path, **kw):
    plan = plan_conversion(path, kw.pop("vision_tower", None))
    return plan.config, read_params(plan, progress=False, **kw)


def assert_same_params(a, b):
    fa, fb = flatten_tree(a), flatten_tree(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        x, y = np.ascontiguousarray(fa[k]), np.ascontiguousarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), k   # bitwise


def t2n(t):
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.detach().numpy()


def test_params_match_torch_weights(ckpts):
    cfg, p = host_params(ckpts["hf"])
    sd = ckpts["model"].state_dict()
    lm, vt = "model.language_model.", "model.vision_tower."
    np.testing.assert_array_equal(p["text"]["layers"]["self_attn"]["q_proj"]["kernel"][1],
                                  t2n(sd[lm + "layers.1.self_attn.q_proj.weight"]).T)
    np.testing.assert_array_equal(p["text"]["layers"]["mlp"]["down_proj"]["kernel"][0],
                                  t2n(sd[lm + "layers.0.mlp.down_proj.weight"]).T)
    np.testing.assert_array_equal(p["text"]["embed_tokens"]["embedding"], t2n(sd[lm + "embed_tokens.weight"]))
    np.testing.assert_array_equal(p["text"]["lm_head"]["kernel"], t2n(sd["lm_head.weight"]).T)
    np.testing.assert_array_equal(p["vision"]["embeddings"]["patch_embedding"]["kernel"],
                                  t2n(sd[vt + "embeddings.patch_embedding.weight"]).transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["vision"]["layers"]["layer_norm1"]["bias"][1],
                                  t2n(sd[vt + "encoder.layers.1.layer_norm1.bias"]))
    np.testing.assert_array_equal(p["vision"]["layers"]["self_attn"]["out_proj"]["bias"][0],
                                  t2n(sd[vt + "encoder.layers.0.self_attn.out_proj.bias"]))
    np.testing.assert_array_equal(p["projector"]["linear_2"]["kernel"],
                                  t2n(sd["model.multi_modal_projector.linear_2.weight"]).T)
    assert sum(x.size for x in flatten_tree(p).values()) == sum(
        t.numel() for t in ckpts["model"].parameters())
    assert cfg.image_token_index == IMAGE_TOKEN and cfg.text.num_key_value_heads == 2


def test_tree_matches_flax_model_init(ckpts):
    import jax

    from duet_jax.models.llava import LlavaModel

    cfg, p = host_params(ckpts["hf"])
    want = jax.eval_shape(LlavaModel(cfg).init, jax.random.PRNGKey(0))
    got = {k: v.shape for k, v in flatten_tree(p).items()}
    assert got == {k: v.shape for k, v in flatten_tree(want).items()}


def test_every_hf_prefix_variant_gives_identical_params(ckpts):
    cfg, ref = host_params(ckpts["hf"])
    assert os.path.isfile(os.path.join(ckpts["hf_sharded"], "model.safetensors.index.json"))
    for name in ("hf_sharded", "hub_legacy", "llava_hf"):
        other_cfg, params = host_params(ckpts[name])
        assert other_cfg == cfg, name
        assert_same_params(params, ref)


def test_original_layout_gives_identical_params(ckpts, tmp_path):
    cfg, ref = host_params(ckpts["hf"])
    clip_full = write_clip_full(str(tmp_path), ckpts["model"])
    inside = write_original(str(tmp_path), ckpts["model"], "inside", tower_inside=True)
    for src, tower in ((ckpts["original"], ckpts["clip_vision"]), (ckpts["original"], clip_full),
                       (inside, ckpts["clip_vision"])):
        got_cfg, params = host_params(src, vision_tower=tower)
        assert got_cfg == cfg, (src, tower)
        assert_same_params(params, ref)


def test_original_image_token_convention_and_missing_tower(ckpts, tmp_path):
    src = write_original(str(tmp_path), ckpts["model"], "no_image_token", with_image=False)
    cfg, _ = host_params(src, vision_tower=ckpts["clip_vision"])
    assert cfg.image_token_index == VOCAB          # first id past the vocabulary
    with pytest.raises(CheckpointError, match="--vision-tower"):
        plan_conversion(src)


def test_original_exports_to_a_working_hf_model(ckpts, tmp_path):
    import shutil

    from transformers import LlavaForConditionalGeneration

    import convert

    back = str(tmp_path / "back")
    convert.export_hf(ckpts["original"], back, vision_tower=ckpts["clip_vision"], progress=False)
    model = LlavaForConditionalGeneration.from_pretrained(back, attn_implementation="eager")
    assert torch_equal(logits(model.eval()), logits(ckpts["model"]))
    # Tokenizer files come from the LLaVA dir only; the CLIP dir gives its preprocessor config.
    clip, llava = str(tmp_path / "clip"), str(tmp_path / "llava")
    shutil.copytree(ckpts["clip_vision"], clip)
    shutil.copytree(ckpts["original"], llava)
    for name in ("tokenizer.json", "preprocessor_config.json"):
        with open(os.path.join(clip, name), "w") as f:
            json.dump({"from": "clip"}, f)
    os.remove(os.path.join(llava, "tokenizer.json"))
    out = str(tmp_path / "jax")
    info = convert.convert_to_orbax(llava, out, vision_tower=clip, progress=False)
    assert "preprocessor_config.json" in info["assets"] and "tokenizer.json" not in info["assets"]
    assert not os.path.exists(os.path.join(out, "tokenizer.json"))


def test_partial_config_gets_transformers_defaults(ckpts, tmp_path):
    import shutil

    from transformers import LlavaConfig as HFLlavaConfig

    d = str(tmp_path / "partial")
    shutil.copytree(ckpts["hf"], d)
    raw = json.load(open(os.path.join(d, "config.json")))
    for k in ("rms_norm_eps", "max_position_embeddings", "tie_word_embeddings"):   # hub-style
        raw["text_config"].pop(k)
    raw["vision_config"].pop("layer_norm_eps")
    json.dump(raw, open(os.path.join(d, "config.json"), "w"))
    cfg, _ = host_params(d)
    ref = HFLlavaConfig.from_dict(raw)
    assert cfg.text.rms_norm_eps == ref.text_config.rms_norm_eps == 1e-6   # config.py says 1e-5
    assert cfg.text.max_position_embeddings == ref.text_config.max_position_embeddings
    assert cfg.vision.layer_norm_eps == ref.vision_config.layer_norm_eps


def run_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "convert", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def logits(model, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (2, 10), generator=g)
    ids[:, 2:6] = IMAGE_TOKEN
    pixels = torch.randn(2, 3, 28, 28, generator=g, dtype=torch.float32).to(model.dtype)
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits


def load_safetensors_dir(d):
    from safetensors.torch import load_file

    out = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".safetensors"):
            out.update({canonical_hf(k): v for k, v in load_file(os.path.join(d, name)).items()})
    return out


def assert_bit_exact(src_dir, dst_dir):
    import torch

    a, b = load_safetensors_dir(src_dir), load_safetensors_dir(dst_dir)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k


def test_cli_round_trip_is_bit_exact_and_loads_in_transformers(ckpts, tmp_path):
    from transformers import LlavaForConditionalGeneration

    out, back = str(tmp_path / "jax"), str(tmp_path / "back")
    r = run_cli("--src", ckpts["hf_sharded"], "--dst", out)
    assert r.returncode == 0, r.stderr
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json"} <= set(os.listdir(out))
    r = run_cli("--src", out, "--dst", back, "--to", "hf")
    assert r.returncode == 0, r.stderr
    assert_bit_exact(ckpts["hf"], back)
    model, info = LlavaForConditionalGeneration.from_pretrained(
        back, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert np.array_equal(logits(model.eval()).numpy(), logits(ckpts["model"]).numpy())
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []   # no staging dirs left


def test_bf16_round_trip_sharded_export_is_bit_exact(tmp_path):
    import jax
    import torch
    from transformers import LlavaForConditionalGeneration

    import convert

    model = tiny_model(torch.bfloat16, seed=1)
    src, out, back = (str(tmp_path / n) for n in ("src", "jax", "back"))
    model.save_pretrained(src)
    convert.convert_to_orbax(src, out, progress=False)
    cfg, params = load_params(out)
    assert {np.dtype(x.dtype) for x in flatten_tree(params).values()} == {np.dtype(ml_dtypes.bfloat16)}
    _, p32 = load_params(out, dtype="float32")           # cast while restoring
    assert_same_params(p32, jax.tree.map(lambda x: np.asarray(x).astype(np.float32), params))
    again = str(tmp_path / "again")                      # converted -> converted, recast
    convert.convert_to_orbax(out, again, dtype="float32", progress=False)
    assert_same_params(load_params(again)[1], p32)
    info = convert.export_hf(out, back, max_shard_bytes=20_000, progress=False)
    assert info["shards"] > 1 and os.path.isfile(os.path.join(back, "model.safetensors.index.json"))
    assert_bit_exact(src, back)
    reloaded = LlavaForConditionalGeneration.from_pretrained(back, attn_implementation="eager")
    assert reloaded.dtype == torch.bfloat16
    assert torch.equal(logits(reloaded.eval()), logits(model))


def test_dtype_cast_matches_torch(ckpts):
    import torch

    _, p = host_params(ckpts["hf"], dtype="bfloat16")
    w = ckpts["model"].state_dict()["model.language_model.layers.1.mlp.up_proj.weight"]
    got = p["text"]["layers"]["mlp"]["up_proj"]["kernel"][1]
    assert got.dtype == ml_dtypes.bfloat16
    assert np.array_equal(got.T.view(np.int16), t2n(w.to(torch.bfloat16)).view(np.int16))


def test_tied_embeddings_and_biases(tmp_path):
    from transformers import LlavaForConditionalGeneration

    import convert

    model = tiny_model(tie=True, bias=True, seed=2)
    src, back = str(tmp_path / "src"), str(tmp_path / "back")
    model.save_pretrained(src)
    cfg, p = host_params(src)
    assert cfg.text.tie_word_embeddings and "lm_head" not in p["text"]
    sd = model.state_dict()
    np.testing.assert_array_equal(p["text"]["layers"]["mlp"]["gate_proj"]["bias"][1],
                                  t2n(sd["model.language_model.layers.1.mlp.gate_proj.bias"]))
    np.testing.assert_array_equal(p["text"]["layers"]["self_attn"]["o_proj"]["bias"][0],
                                  t2n(sd["model.language_model.layers.0.self_attn.o_proj.bias"]))
    convert.export_hf(src, back, progress=False)
    reloaded = LlavaForConditionalGeneration.from_pretrained(back, attn_implementation="eager")
    assert torch_equal(logits(reloaded.eval()), logits(model))


def torch_equal(a, b):
    return np.array_equal(a.numpy(), b.numpy())


def test_load_params_places_leaves_on_shardings(ckpts, tmp_path):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import convert

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    _, ref = host_params(ckpts["hf"])
    # Vocab-sharded embedding and lm_head, column-sharded stacked q_proj, the rest replicated.
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, P()), ref)
    shardings["text"]["embed_tokens"]["embedding"] = NamedSharding(mesh, P("model", None))
    shardings["text"]["lm_head"]["kernel"] = NamedSharding(mesh, P(None, "model"))
    shardings["text"]["layers"]["self_attn"]["q_proj"]["kernel"] = NamedSharding(mesh, P(None, None, "model"))
    out = str(tmp_path / "jax")
    convert.convert_to_orbax(ckpts["hf"], out, progress=False)
    for path in (ckpts["hf"], out):
        _, params = load_params(path, shardings=shardings)
        placed, want = flatten_tree(params), flatten_tree(shardings)
        for k, leaf in placed.items():
            assert leaf.sharding.is_equivalent_to(want[k], leaf.ndim), (path, k)
        assert_same_params(jax.tree.map(np.asarray, params), ref)
    del shardings["vision"]["post_layernorm"]
    with pytest.raises(CheckpointError, match="vision/post_layernorm/bias"):
        load_params(ckpts["hf"], shardings=shardings)


# ---- bad input: one clear line from the CLI, non-zero exit, no output directory ----

class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def _bad_checkpoints(ckpts, root):
    """name -> (src dir, substrings the error line must contain)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(os.path.join(ckpts["hf"], "model.safetensors"))

    def with_state(name, st):
        d = os.path.join(root, name)
        os.makedirs(d)
        save_file(st, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(os.path.join(ckpts["hf"], "config.json"), d)
        return d

    drop = ["language_model.model.layers.1.mlp.up_proj.weight", "vision_tower.post_layernorm.bias"]
    extra = {"language_model.model.layers.0.self_attn.rotary.weight": torch.zeros(2), "foo.bar": torch.zeros(1)}
    wrong = dict(state, **{"multi_modal_projector.linear_1.weight": torch.zeros(32, 31)})
    shard_dir = os.path.join(root, "missing_shard")
    shutil.copytree(ckpts["hf_sharded"], shard_dir)
    index = json.load(open(os.path.join(shard_dir, "model.safetensors.index.json")))
    gone = sorted(set(index["weight_map"].values()))[1]
    os.remove(os.path.join(shard_dir, gone))
    not_ckpt = os.path.join(root, "not_a_checkpoint")
    os.makedirs(not_ckpt)
    open(os.path.join(not_ckpt, "README.md"), "w").close()
    evil = os.path.join(root, "evil_bin")
    os.makedirs(evil)
    shutil.copy(os.path.join(ckpts["hf"], "config.json"), evil)
    _Evil.marker = os.path.join(root, "PWNED")
    torch.save({"w": torch.zeros(2), "payload": _Evil()}, os.path.join(evil, "pytorch_model.bin"))
    return {
        "missing_shard": (shard_dir, [gone, "missing"]),
        "missing_keys": (with_state("missing_keys", {k: v for k, v in state.items() if k not in drop}),
                         ["missing 2 weights", "language_model.model.layers.1.mlp.up_proj.weight",
                          "vision_tower.vision_model.post_layernorm.bias"]),
        "unexpected_keys": (with_state("unexpected_keys", dict(state, **extra)),
                            ["2 unexpected weights", "foo.bar", "layers.0.self_attn.rotary.weight"]),
        "shape_mismatch": (with_state("shape_mismatch", wrong),
                           ["multi_modal_projector.linear_1.weight", "[32, 31]", "[32, 32]"]),
        "unknown_layout": (with_state("unknown_layout", {"backbone." + k: v for k, v in state.items()}),
                           ["unknown checkpoint layout", "backbone."]),
        "not_a_checkpoint": (not_ckpt, ["not a checkpoint", "config.json"]),
        "unsafe_pickle": (evil, ["pytorch_model.bin", "unpickling it could run code"]),
    }


@pytest.fixture(scope="module")
def cli_failures(ckpts, tmp_path_factory):
    """Run every bad conversion at once (the CLI start-up dominates), keyed by case name."""
    root = str(tmp_path_factory.mktemp("bad"))
    cases = _bad_checkpoints(ckpts, root)
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "convert", "--src", src, "--dst", os.path.join(root, "out", name)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (src, _) in cases.items()}
    results = {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}
    return root, cases, results


@pytest.mark.parametrize("case", ["missing_shard", "missing_keys", "unexpected_keys", "shape_mismatch",
                                  "unknown_layout", "not_a_checkpoint", "unsafe_pickle"])
def test_cli_rejects_bad_checkpoint_with_one_line(cli_failures, case):
    root, cases, results = cli_failures
    rc, stdout, stderr = results[case]
    lines = stderr.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in cases[case][1]:
        assert needle in lines[0], (needle, lines[0])
    assert not os.path.exists(os.path.join(root, "out", case))
    assert not os.path.exists(os.path.join(root, "PWNED"))      # the pickle payload never ran
    out_dir = os.path.join(root, "out")
    assert not os.path.isdir(out_dir) or os.listdir(out_dir) == []   # no staging leftovers
