"""Files bundled with the package, and how paths written in a config file resolve.

A relative path in a config file names a file relative to that config file's
folder, never to the working directory, so `train.py --config /abs/configs/tiny.yaml`
reads the same files from anywhere. `duet_jax://data/assets/tiny_llava.json` names a
file inside the installed package (`duet_jax/data/assets/...`): the bundled
assets, the miniature's checkpoint and configs.

Bundled (package data, see pyproject.toml): `duet_jax/configs/*.yaml` (the
miniature's training stages, read by `duet_jax.miniature`), `duet_jax/data/assets/`
(the 24-record data set of configs/tiny.yaml, the demo picture) and
`duet_jax/miniature/pretrained/` (the shipped miniature checkpoint).
"""
from __future__ import annotations

import os
from typing import Optional

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs")
PACKAGE_SCHEME = "duet_jax://"


def package_path(*parts: str) -> str:
    """Absolute path of a file inside the installed package."""
    return os.path.join(PACKAGE_DIR, *parts)


def bundled_config(name: str) -> str:
    """Absolute path of a config bundled with the package (`miniature.yaml`)."""
    return os.path.join(CONFIG_DIR, name)


def resolve_path(value, base_dir: Optional[str]):
    """A path written in a config: `duet_jax://x` -> the package's x; `~` expanded;
    relative -> joined to `base_dir` (the config file's folder), or left as written
    when `base_dir` is None (a command-line value: relative to the working directory).
    Non-strings (None) pass through."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(PACKAGE_SCHEME):
        return package_path(*value[len(PACKAGE_SCHEME):].split("/"))
    value = os.path.expanduser(value)
    if os.path.isabs(value) or base_dir is None:
        return value
    return os.path.normpath(os.path.join(base_dir, value))


def child_env(env: Optional[dict] = None) -> dict:
    """Environment for a `python -m duet_jax...` child process that imports this very
    copy of the package (a clone run from anywhere, or an installed one)."""
    env = dict(os.environ if env is None else env)
    root = os.path.dirname(PACKAGE_DIR)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env
