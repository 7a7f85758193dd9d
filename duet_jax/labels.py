"""The label conventions shared by data, models, reduction and training (no JAX: the
data pipeline and the evaluation code import them without an accelerator stack)."""

IGNORE_INDEX = -100   # label of a token that is not supervised (HF / PyTorch ignore_index)
