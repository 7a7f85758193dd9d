"""`Generated.lengths` counts the same way for every family: the generated tokens with
the EOS included, pad after it. Forced EOS: a free run's third token is declared EOS."""
import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.generation.decode import generate_qwen, generate_tokens
from duet_jax.models.llava import LlavaModel
from duet_jax.models.qwen25vl import Qwen25VLModel, rope_index
from tests.helpers import tiny_hf, tiny_qwen

NEW, PAD = 6, 0


def _check(free, run):
    """free: tokens of a run without EOS; run(eos) -> Generated with that EOS."""
    eos = int(free[0, 2])
    out = run(eos)
    toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for b in range(len(toks)):
        hits = np.flatnonzero(free[b] == eos)
        n = int(hits[0]) + 1 if len(hits) else NEW
        assert int(lengths[b]) == n                       # EOS included
        np.testing.assert_array_equal(toks[b, :n], free[b, :n])
        assert (toks[b, n:] == PAD).all()
    assert int(lengths[0]) <= 3


def test_llava_and_qwen_count_lengths_the_same_way():
    hf = tiny_hf.tiny_llava(text_layers=2)
    cfg, params = tiny_hf.jax_params(hf)
    ids, mask, pixels = tiny_hf.llava_batch(hf.config, text_lengths=(12, 7), seed=1)
    llava = lambda eos: generate_tokens(LlavaModel(cfg), params, ids, pixels, mask,
                                        max_new_tokens=NEW, eos_id=eos, pad_id=PAD)
    _check(np.asarray(llava(-1).tokens), llava)

    hf = tiny_qwen.tiny_qwen(text_layers=2)
    cfg, params = tiny_qwen.jax_params(hf)
    ids, pixels, grid = tiny_qwen.qwen_inputs(seed=2)
    pos, nxt = rope_index(cfg, ids, grid)
    qwen = lambda eos: generate_qwen(
        Qwen25VLModel(cfg), jax.tree.map(jnp.asarray, params), jnp.asarray(ids),
        jnp.asarray(pixels), tuple(map(tuple, grid.tolist())), jnp.asarray(pos),
        jnp.asarray(nxt), max_new_tokens=NEW, eos_id=eos, pad_id=PAD)
    _check(np.asarray(qwen(-1).tokens), qwen)
