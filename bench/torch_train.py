"""The PyTorch way of a reduced LLaVA training step: HF modules, autograd, gradient
checkpointing on every decoder layer, AdamW over the projector and the LLM (CLIP frozen,
the fine-tune recipe).

The forward is the peer prefill's (`bench.torch_peer.reduced_forward`: Stage 1 on the
CLIP feature layer, the Stage-2 drops as gathers between layers, ranked by the training
query set `all`: the question rows after the image); the loss is HF's next-token cross
entropy over the supervised rows that remain, the labels gathered along with the rows.
"""
from __future__ import annotations

import torch

from bench.torch_peer import reduced_forward

IGNORE = -100


def spliced_labels(labels: torch.Tensor, image_start: int, n_ids: int, n_image: int):
    """labels [B, L] over the prompt ids -> [B, L - n_ids + n_image] over the spliced
    sequence (the image block's `n_ids` ids replaced by `n_image` unsupervised rows)."""
    block = torch.full((labels.shape[0], n_image), IGNORE, dtype=labels.dtype,
                       device=labels.device)
    return torch.cat([labels[:, :image_start], block, labels[:, image_start + n_ids:]], 1)


def peer_loss(hf, input_ids, pixel_values, labels, reduction, image_start: int,
              question_rows: int) -> torch.Tensor:
    """Mean next-token CE of the (reduced) forward, as `LlavaForConditionalGeneration`
    computes it, over the rows that survive the drops."""
    h, rows, _ = reduced_forward(hf, input_ids, pixel_values, reduction, image_start,
                                 train_queries=question_rows)
    # the last row (text) is never dropped: rows.max() + 1 is the spliced length
    n_image = int(rows.max()) + 1 - (input_ids.shape[1] - hf.config.image_seq_length)
    kept = torch.gather(spliced_labels(labels, image_start, hf.config.image_seq_length,
                                       n_image), 1, rows)
    logits = hf.lm_head(hf.model.language_model.norm(h)).float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), kept[:, 1:].flatten(),
                                             ignore_index=IGNORE)


class PeerTrainer:
    """One model, one AdamW; `step(reduction)` runs forward, backward and the update on
    the batch and returns the loss."""

    def __init__(self, hf, batch: dict, image_start: int, question_rows: int, lr: float = 2e-5):
        self.hf = hf
        self.image_start, self.question_rows = image_start, question_rows
        self.batch = batch
        for p in hf.parameters():
            p.requires_grad_(False)
        trained = [*hf.model.multi_modal_projector.parameters(),
                   *hf.model.language_model.parameters(), *hf.lm_head.parameters()]
        for p in trained:
            p.requires_grad_(True)
        if hasattr(hf, "activation_checkpointing_enable"):     # its name from transformers 5.2x
            hf.activation_checkpointing_enable({"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf.train()
        self.opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)

    def step(self, reduction) -> float:
        b = self.batch
        loss = peer_loss(self.hf, b["input_ids"], b["pixel_values"], b["labels"],
                         reduction, self.image_start, self.question_rows)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())
