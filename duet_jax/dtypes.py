"""The one parser of user-facing dtype names ('float32', 'bfloat16', 'float16')."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def parse_dtype(name, what: str = "dtype"):
    """A dtype name (or an already-parsed dtype, or None) -> the jnp dtype (None stays None).

    `what` names the argument in the error, e.g. "model.dtype" or "--dtype"."""
    if name is None or not isinstance(name, str):
        return name
    if name not in DTYPES:
        raise ValueError(f"{what} {name!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype) -> Optional[str]:
    """jnp/np dtype -> its name in DTYPES, or None for another dtype."""
    for name, dt in DTYPES.items():
        if dtype is not None and jnp.dtype(dtype) == jnp.dtype(dt):
            return name
    return None
