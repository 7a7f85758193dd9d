"""Maps a torch LLaVA state dict onto our param layout (test-side, temporary until convert lands)."""
import numpy as np
def sd_to_params(sd, cfg):
    """scratch: HF transformers-5 LlavaForConditionalGeneration state dict -> our params"""
    sd = {k: v.detach().float().numpy() for k, v in sd.items()}
    def lin(prefix, bias=True):
        d = {"kernel": sd[prefix + ".weight"].T}
        if prefix + ".bias" in sd: d["bias"] = sd[prefix + ".bias"]
        return d
    def ln(prefix): return {"scale": sd[prefix+".weight"], "bias": sd[prefix+".bias"]}
    vt = [k for k in sd if "embeddings.class_embedding" in k][0].split("embeddings.class_embedding")[0]
    nv = cfg.vision.num_hidden_layers
    def stack(fn, n): 
        items = [fn(i) for i in range(n)]
        import jax
        return jax.tree.map(lambda *a: np.stack(a), *items)
    vision = {
      "embeddings": {"class_embedding": sd[vt+"embeddings.class_embedding"],
                     "patch_embedding": {"kernel": sd[vt+"embeddings.patch_embedding.weight"].transpose(2,3,1,0)},
                     "position_embedding": {"embedding": sd[vt+"embeddings.position_embedding.weight"]}},
      "pre_layrnorm": ln(vt+"pre_layrnorm"), "post_layernorm": ln(vt+"post_layernorm"),
      "layers": stack(lambda i: {
          "layer_norm1": ln(f"{vt}encoder.layers.{i}.layer_norm1"), "layer_norm2": ln(f"{vt}encoder.layers.{i}.layer_norm2"),
          "self_attn": {n: lin(f"{vt}encoder.layers.{i}.self_attn.{n}") for n in ["q_proj","k_proj","v_proj","out_proj"]},
          "mlp": {n: lin(f"{vt}encoder.layers.{i}.mlp.{n}") for n in ["fc1","fc2"]}}, nv)}
    pp = [k for k in sd if "multi_modal_projector.linear_1.weight" in k][0].split("linear_1")[0]
    proj = {"linear_1": lin(pp+"linear_1"), "linear_2": lin(pp+"linear_2")}
    lp = [k for k in sd if k.endswith("embed_tokens.weight")][0].split("embed_tokens")[0]
    nt = cfg.text.num_hidden_layers
    text = {"embed_tokens": {"embedding": sd[lp+"embed_tokens.weight"]}, "norm": {"scale": sd[lp+"norm.weight"]},
            "layers": stack(lambda i: {
                "input_layernorm": {"scale": sd[f"{lp}layers.{i}.input_layernorm.weight"]},
                "post_attention_layernorm": {"scale": sd[f"{lp}layers.{i}.post_attention_layernorm.weight"]},
                "self_attn": {n: lin(f"{lp}layers.{i}.self_attn.{n}") for n in ["q_proj","k_proj","v_proj","o_proj"]},
                "mlp": {n: lin(f"{lp}layers.{i}.mlp.{n}") for n in ["gate_proj","up_proj","down_proj"]}}, nt)}
    if "lm_head.weight" in sd and not cfg.text.tie_word_embeddings: text["lm_head"] = {"kernel": sd["lm_head.weight"].T}
    return {"vision": vision, "projector": proj, "text": text}
