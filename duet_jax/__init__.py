"""duet_jax: DUET-VLM dual-stage visual-token reduction for LLaVA-style VLMs, in JAX/Flax."""
__version__ = "0.1.0"
