"""Tiny random LLaVA checkpoints in every layout, all holding the same weights.

`ckpts` (module scope) builds, in one temp dir:
    hf          save_pretrained of a tiny LlavaForConditionalGeneration (safetensors)
    hf_sharded  the same with a small max_shard_size (index file + several shards)
    hub_legacy  renamed to the hub llava-hf names (vision_tower.vision_model.*)
    llava_hf    renamed to transformers 5's in-memory names (model.language_model.* ...)
    original    original LLaVA: model.layers.*, model.mm_projector.{0,2}.*, lm_head,
                two .bin shards + index, config.json model_type llava_llama
    clip_vision CLIPVisionModel dir for `original`; clip_full: a CLIPModel dir
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

IMAGE_TOKEN = 100
VOCAB = 128


def tiny_model(dtype=None, *, tie=False, bias=False, seed=0):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, image_size=28, patch_size=14, projection_dim=16)
    tc = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     tie_word_embeddings=tie, attention_bias=bias, mlp_bias=bias)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE_TOKEN,
                      image_seq_length=4, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():   # default init leaves biases 0 and norms 1: make every value distinct
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model.to(dtype) if dtype is not None else model


def write_tokenizer(directory: str, with_image: bool = True) -> None:
    """A tiny WordLevel tokenizer (+ processor files); `<image>` gets id IMAGE_TOKEN."""
    from tokenizers import Tokenizer, models

    vocab = {f"w{i}": i for i in range(IMAGE_TOKEN)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    if with_image:
        tok.add_special_tokens(["<image>"])
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast"}, f)
    with open(os.path.join(directory, "chat_template.jinja"), "w") as f:
        f.write("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def save_renamed(state: dict, directory: str, rename, config_src: str) -> str:
    """Write `state` (torch tensors) under new names as model.safetensors + config.json."""
    from safetensors.torch import save_file

    os.makedirs(directory)
    save_file({rename(k): v.contiguous() for k, v in state.items()},
              os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(config_src, "config.json"), directory)
    return directory


def sub(*pairs):
    """Rename function: the first matching (regex, replacement) pair applies."""
    def rename(k):
        for pattern, repl in pairs:
            if re.match(pattern, k):
                return re.sub(pattern, repl, k, count=1)
        return k
    return rename


def canonical_hf(key: str) -> str:
    """Any accepted HF prefix variant -> the hub llava-hf name (test-side, regex only)."""
    return sub((r"^(model\.)?vision_tower\.(vision_model\.)?", "vision_tower.vision_model."),
               (r"^(model\.)?language_model\.(model\.)?(?!lm_head)", "language_model.model."),
               (r"^(language_model\.)?lm_head\.", "language_model.lm_head."),
               (r"^(model\.)?multi_modal_projector\.", "multi_modal_projector."))(key)


def write_original(root: str, model, name: str = "original", with_image: bool = True,
                   tower_inside: bool = False) -> str:
    """Original LLaVA-1.5 layout from the HF model's weights (two .bin shards + index)."""
    import torch

    d = os.path.join(root, name)
    os.makedirs(d)
    sd = model.state_dict()
    state = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            state["model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.multi_modal_projector.linear_"):
            idx = {"1": "0", "2": "2"}[k[len("model.multi_modal_projector.linear_")]]
            state[f"model.mm_projector.{idx}." + k.rsplit(".", 1)[1]] = v
        elif k == "lm_head.weight":
            state[k] = v
        elif tower_inside:
            state["model.vision_tower.vision_tower.vision_model." + k[len("model.vision_tower."):]] = v
    # transformers-4.31-era checkpoints carry this buffer; a converter must skip it
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.arange(4, dtype=torch.float32)
    keys = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    weight_map = {}
    for fname, ks in halves.items():
        torch.save({k: state[k].clone() for k in ks}, os.path.join(d, fname))
        weight_map.update({k: fname for k in ks})
    with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    text = model.config.text_config.to_dict()
    text.pop("rope_parameters", None)
    text.update(rope_theta=10000.0, rope_scaling=None)   # the old config.json style
    config = dict(text, model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
                  mm_vision_tower="openai/clip-vit-large-patch14-336",
                  mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                  mm_vision_select_feature="patch", mm_hidden_size=32, mm_use_im_start_end=False,
                  mm_use_im_patch_token=False, image_aspect_ratio="pad", torch_dtype="float32")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f)
    write_tokenizer(d, with_image=with_image)
    return d


def write_clip_full(root: str, model) -> str:
    """A CLIPModel dir (text tower too) whose vision tower is the LLaVA one."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    vc = model.config.vision_config
    tc = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, vocab_size=50, projection_dim=16,
                        eos_token_id=2, bos_token_id=1, pad_token_id=0)
    clip = CLIPModel(CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(),
                                projection_dim=16))
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    d = os.path.join(root, "clip_full")
    clip.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import transformers

    transformers.logging.set_verbosity_error()
    root = str(tmp_path_factory.mktemp("ckpts"))
    model = tiny_model()
    out = {"model": model, "root": root}
    out["hf"] = os.path.join(root, "hf")
    model.save_pretrained(out["hf"])
    write_tokenizer(out["hf"])
    out["hf_sharded"] = os.path.join(root, "hf_sharded")
    model.save_pretrained(out["hf_sharded"], max_shard_size="40KB")
    write_tokenizer(out["hf_sharded"])
    state = model.state_dict()
    out["hub_legacy"] = save_renamed(state, os.path.join(root, "hub_legacy"), canonical_hf, out["hf"])
    # transformers 5's in-memory names, with the CLIPVisionModel `vision_model.` level kept
    out["llava_hf"] = save_renamed(state, os.path.join(root, "llava_hf"),
                                   sub((r"^model\.vision_tower\.", "model.vision_tower.vision_model.")),
                                   out["hf"])
    out["clip_vision"] = os.path.join(root, "clip_vision")
    model.model.vision_tower.save_pretrained(out["clip_vision"])
    out["original"] = write_original(root, model)
    return out
