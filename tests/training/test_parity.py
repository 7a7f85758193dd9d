"""One training step against HF PyTorch: loss and gradients of LlavaForConditionalGeneration
on the same data and labels (fp32, 1e-4), and the optimizer against torch AdamW + HF's
warmup-cosine schedule + clip_grad_norm_."""
import functools

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

from duet_jax.models.llava import LlavaModel
from duet_jax.training.batching import StepLayout
from duet_jax.training.config import OptimConfig
from duet_jax.training.optim import make_optimizer
from duet_jax.training.step import accumulate_gradients
from tests.helpers.tiny_hf import jax_params
from tests.training.conftest import IMAGE_FOLDER, TINY_JSON


def _tiny_setup(assets_dir, batch_size=6):
    """Random HF LLaVA (our config -> HF config) + one real data batch with text-only samples."""
    from transformers import AutoTokenizer, LlavaConfig as HFLlavaConfig
    from transformers import LlavaForConditionalGeneration
    from duet_jax.data import LoaderConfig, make_train_iterator, load_image_processor
    from duet_jax.training.config import RandomModelConfig
    from duet_jax.training.random_model import random_llava_config
    from duet_jax.models.config import LlavaConfig

    tok = AutoTokenizer.from_pretrained(assets_dir, local_files_only=True)
    cfg = random_llava_config(RandomModelConfig(vision_layers=2, text_layers=2, text_kv_heads=2),
                              vocab_size=len(tok), image_token_index=tok.convert_tokens_to_ids("<image>"),
                              pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration._from_config(HFLlavaConfig.from_dict(cfg.to_hf()),
                                                     attn_implementation="eager")
    assert LlavaConfig.from_hf(hf.config.to_dict()) == cfg
    it = make_train_iterator(TINY_JSON, IMAGE_FOLDER, tok, load_image_processor(assets_dir),
                             template="vicuna_v1", image_token_index=cfg.image_token_index,
                             image_seq_length=cfg.image_seq_length, max_length=128,
                             config=LoaderConfig(batch_size=batch_size, num_threads=0, seed=1))
    batch = next(it)
    assert 0 < batch["has_image"].sum() < batch_size, "want a batch mixing image and text-only"
    return hf, cfg, jax_params(hf)[1], batch


def _hf_loss_and_grads(hf, batch):
    hf.model.vision_tower.requires_grad_(False)     # LLaVA-1.5 fine-tune: CLIP frozen
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    has = batch["has_image"]
    out = hf(input_ids=ids, attention_mask=torch.tensor(batch["attention_mask"]),
             pixel_values=torch.tensor(batch["pixel_values"][has]),
             labels=torch.tensor(batch["labels"], dtype=torch.long))
    out.loss.backward()
    # Map the gradients through the real checkpoint converter: write them as the weights.
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    return out.loss.item(), jax_params(hf)[1]


def test_step_loss_and_grads_match_hf(assets_dir):
    hf, cfg, params, batch = _tiny_setup(assets_dir)
    ref_loss, ref_grads = _hf_loss_and_grads(hf, batch)

    # The train step's own gradient path (one micro-batch, the finetune recipe's groups).
    model = LlavaModel(cfg)
    stacked = {k: batch[k][None] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    layout = StepLayout(batch["input_ids"].shape[1], False, None)
    grads, metrics = jax.jit(functools.partial(
        accumulate_gradients, model=model, reduction=None, groups=("projector", "text"),
        layout=layout))(params, stacked)
    np.testing.assert_allclose(float(metrics["loss"]), ref_loss, rtol=0, atol=1e-4)
    # LLaVA's label masking: exactly the non -100 shifted labels are targets.
    assert int(metrics["targets"]) == int((batch["labels"][:, 1:] != -100).sum())
    assert int(metrics["tokens"]) == int(batch["attention_mask"].sum())
    assert set(grads) == {"projector", "text"}
    for group in ("projector", "text"):
        flat_ours = jax.tree_util.tree_leaves_with_path(grads[group])
        flat_ref = jax.tree.leaves(ref_grads[group])
        assert len(flat_ours) == len(flat_ref)
        for (path, ours), ref in zip(flat_ours, flat_ref):
            np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4,
                                       err_msg=f"{group}{jax.tree_util.keystr(path)}")


def _torch_reference(params, grads_seq, cfg, total):
    """HF Trainer semantics: AdamW (decay on weights only), clip_grad_norm_, warmup+cosine."""
    from transformers import get_cosine_schedule_with_warmup
    from duet_jax.training.optim import warmup_steps

    names = list(params)
    tensors = {n: torch.nn.Parameter(torch.tensor(params[n])) for n in names}
    decay = [tensors[n] for n in names if not n.endswith(("bias", "scale"))]
    no_decay = [tensors[n] for n in names if n.endswith(("bias", "scale"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps)
    sched = get_cosine_schedule_with_warmup(opt, warmup_steps(cfg, total), total)
    history = []
    for grads in grads_seq:
        for n in names:
            tensors[n].grad = torch.tensor(grads[n])
        torch.nn.utils.clip_grad_norm_(list(tensors.values()), cfg.max_grad_norm)
        opt.step()
        sched.step()
        history.append({n: tensors[n].detach().numpy().copy() for n in names})
    return history


def test_optimizer_matches_torch_adamw_schedule_and_clipping():
    rng = np.random.default_rng(0)
    shapes = {"projector/linear_1/kernel": (4, 3), "projector/linear_1/bias": (3,),
              "text/layers/norm/scale": (5,), "text/embed_tokens/embedding": (6, 2)}
    flat = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    frozen = rng.standard_normal((3, 3)).astype(np.float32)

    def nest(d, vision):
        out = {"vision": {"w": {"kernel": vision}}}
        for k, v in d.items():
            node = out
            *parents, leaf = k.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
        return out

    total = 7
    cfg = OptimConfig(lr=0.05, warmup_ratio=0.3, weight_decay=0.1, max_grad_norm=1.0)
    grads_seq = [{k: (3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
                 for _ in range(total)]
    ref = _torch_reference(flat, grads_seq, cfg, total)

    params = jax.tree.map(jnp.asarray, nest(flat, frozen))
    opt = make_optimizer(cfg, total, params)
    state = opt.init(params)
    for step, grads in enumerate(grads_seq):
        g = jax.tree.map(jnp.asarray, nest(grads, rng.standard_normal((3, 3)).astype(np.float32)))
        updates, state = opt.update(g, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        for k in shapes:
            node = params
            for p in k.split("/"):
                node = node[p]
            np.testing.assert_allclose(np.asarray(node), ref[step][k], rtol=1e-5, atol=1e-5,
                                       err_msg=f"step {step} {k}")
        np.testing.assert_array_equal(np.asarray(params["vision"]["w"]["kernel"]), frozen)


@pytest.mark.parametrize("recipe, trained", [("finetune", {"projector", "text"}),
                                             ("pretrain", {"projector"}),
                                             ("full", {"vision", "projector", "text"})])
def test_recipes_update_only_their_groups(recipe, trained):
    from duet_jax.training.optim import trained_groups

    assert set(trained_groups(recipe)) == trained
    params = {g: {"w": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
              for g in ("vision", "projector", "text")}
    opt = make_optimizer(OptimConfig(lr=0.1, warmup_ratio=0.0, weight_decay=0.1, recipe=recipe),
                         3, params)
    state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, state = opt.update(grads, state, params)
    for group in params:
        moved = [bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates[group])]
        assert all(moved) if group in trained else not any(moved), (group, moved)
    # Adam moments exist only for the trained groups (frozen ones cost no optimizer memory).
    moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert len(moments) == 2 * 2 * len(trained)     # (mu, nu) x (kernel, bias) per group


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedule_matches_hf(schedule):
    import transformers
    from duet_jax.training.optim import learning_rate_schedule, warmup_steps

    cfg = OptimConfig(lr=2e-5, warmup_ratio=0.03, schedule=schedule)
    total = 5198    # one epoch of mix665k at batch 128
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    make = {"cosine": transformers.get_cosine_schedule_with_warmup,
            "linear": transformers.get_linear_schedule_with_warmup}[schedule]
    sched = make(opt, warmup_steps(cfg, total), total)
    ours = learning_rate_schedule(cfg, total)
    for step in range(total):
        if step in (0, 1, 155, 156, 157, 2000, total - 1):
            np.testing.assert_allclose(float(ours(step)), sched.get_last_lr()[0], rtol=1e-5,
                                       atol=1e-12, err_msg=f"step {step}")
        opt.step()
        sched.step()
