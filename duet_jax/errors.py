"""The one base class of the package's input errors (a bottom module: every layer may raise it).

Commands report an :class:`InputError` as one line `error: <what> (<where>); <how to fix>`
and exit 2 (`duet_jax.cli.report_failure`); OSError (disk full, permission) exits 1.
"""


class InputError(ValueError):
    """Bad user input: a file, key or value the user can fix. Subclasses: ConfigError,
    RecordError, CheckpointError, ScoreError; so every command reports them alike."""
