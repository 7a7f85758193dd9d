"""Tiny random HF Qwen2.5-VL models and inputs: the reference of the Flax ones."""
from __future__ import annotations

import tempfile

import numpy as np
import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from tests.helpers.tiny_hf import perturbed

IMAGE, VIDEO, VSTART, VEND = 150, 151, 152, 153


def tiny_qwen_config(*, text_layers=2, vision_depth=3, fullatt=(1,), tie=False, kv_heads=2,
                     window=56) -> Qwen2_5_VLConfig:
    vc = dict(depth=vision_depth, hidden_size=32, intermediate_size=48, num_heads=4, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=window, out_hidden_size=64,
              fullatt_block_indexes=list(fullatt))
    tc = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=text_layers,
              num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
              rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]),
              bos_token_id=1, eos_token_id=2, tie_word_embeddings=tie)
    return Qwen2_5_VLConfig(vision_config=vc, text_config=tc, image_token_id=IMAGE,
                            video_token_id=VIDEO, vision_start_token_id=VSTART,
                            vision_end_token_id=VEND, tie_word_embeddings=tie)


def tiny_qwen(seed=0, **kw) -> Qwen2_5_VLForConditionalGeneration:
    return perturbed(Qwen2_5_VLForConditionalGeneration, tiny_qwen_config(**kw), seed)


def save_tiny(model, directory: str) -> str:
    model.save_pretrained(directory)
    return directory


def jax_params(model):
    from duet_jax.checkpoints.qwen25vl import load_qwen_params
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return load_qwen_params(d)


def image_processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112 * 2, patch_size=14,
                                    merge_size=2, temporal_patch_size=2)


def images(sizes=((90, 130),), seed=0):
    g = np.random.default_rng(seed)
    return [Image.fromarray((g.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in sizes]


def qwen_inputs(sizes=((90, 130),), text=(5, 9), seed=0):
    """One sample: `text[0]` tokens, <vision_start>, image placeholders, <vision_end>, `text[1]`
    tokens per image. Returns (input_ids [1, L], pixel_values [N, 1176], grid [n_img, 3])."""
    g = np.random.default_rng(seed)
    out = image_processor()(images=images(sizes, seed), return_tensors="np")
    grid = out["image_grid_thw"]
    ids = list(g.integers(3, 140, text[0]))
    for t, h, w in grid:
        ids += [VSTART] + [IMAGE] * int(t * h * w // 4) + [VEND] + list(g.integers(3, 140, text[1]))
    return np.asarray([ids], np.int64), out["pixel_values"], grid


def hf_inputs(ids, pixels, grid):
    ids_t = torch.tensor(ids)
    return dict(input_ids=ids_t, pixel_values=torch.tensor(pixels),
                image_grid_thw=torch.tensor(grid), attention_mask=torch.ones_like(ids_t),
                mm_token_type_ids=(ids_t == IMAGE).int())


CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_processor(directory: str) -> None:
    """A character-level tokenizer with Qwen's special tokens at the tiny config's ids, Qwen's
    chat format, and the PIL image processor, saved next to a tiny model."""
    import string
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {c: i for i, c in enumerate(list(string.printable[:95]) + ["\n", "<unk>"])}
    specials = {"<|image_pad|>": IMAGE, "<|video_pad|>": VIDEO, "<|vision_start|>": VSTART,
                "<|vision_end|>": VEND, "<|im_start|>": 154, "<|im_end|>": 2, "<|endoftext|>": 156}
    vocab.pop(string.printable[2])        # id 2 is the tiny config's eos: <|im_end|>
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    image_processor().save_pretrained(directory)
