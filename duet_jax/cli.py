"""What every command line of the package shares (`duet-eval`, `duet-convert`, `duet-train`,
`duet-tiny`, `duet-demo` and their `eval.py` / `train.py` / `python -m convert` wrappers).

Bad arguments (missing, unknown, malformed) print one `error: ...` line, then the
usage, on stderr and exit 2; failures the user can fix later on print one line too.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from duet_jax.errors import InputError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one `error: ...` line first, then the usage (subparsers inherit it)."""

    def error(self, message):
        message = " ".join(str(message).split())
        sys.stderr.write(f"error: {message}\n{self.format_usage()}"
                         f"(see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


# --- failures past the arguments -------------------------------------------------------
EXIT_INPUT = 2         # bad input: a file, key or value the user can fix
EXIT_ENVIRONMENT = 1   # the machine: disk full, permission, a missing mount
EXIT_INTERRUPTED = 130


def one_line(error: BaseException) -> str:
    """The exception's message on one line (multi-line library messages folded)."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        # OSError's str() puts the errno first ("[Errno 28] ..."); the user needs what and where
        text = f"{error.strerror} ({error.filename})"
    return text or type(error).__name__


def debug() -> bool:
    """`DUET_DEBUG=1` keeps tracebacks (for bug reports); users see one line otherwise."""
    import os

    return os.environ.get("DUET_DEBUG", "") not in ("", "0")


def quiet_libraries() -> None:
    """Silence absl/orbax/tensorstore INFO and WARNING chatter on user-facing paths: a failed
    save must end in our one line, not in a hundred lines of library logging."""
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("absl", "orbax", "tensorstore", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # orbax's serialization tasks that failed with the save are garbage-collected later and
    # asyncio logs each as "Task exception was never retrieved": the error is already ours.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    # The same tasks' coroutines that never started are reported when the interpreter exits
    # ("coroutine ... was never awaited", plus a tracemalloc hint): noise after our line too.
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                            category=RuntimeWarning)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:   # absl comes with orbax; a scorer-only install has none
        pass


def report_failure(error: BaseException, *, undone: str = "") -> int:
    """Print one `error: ...` line for `error` on stderr and return the exit code.

    InputError (and its subclasses) -> 2; OSError (disk, permission) -> 1; anything else is
    a bug or an unforeseen file, named by its type, -> 1. `undone` says what was not
    written ("no output was written"). With DUET_DEBUG=1 the caller should re-raise."""
    if isinstance(error, KeyboardInterrupt):
        print(f"error: interrupted{'; ' + undone if undone else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    message = one_line(error)
    if isinstance(error, InputError):
        code = EXIT_INPUT
    elif isinstance(error, OSError):
        code = EXIT_ENVIRONMENT
    else:
        message = f"{type(error).__name__}: {message} (set DUET_DEBUG=1 for the traceback)"
        code = EXIT_ENVIRONMENT
    print(f"error: {message}{'; ' + undone if undone else ''}", file=sys.stderr)
    return code


def guarded(fn, *args, undone: str = "", **kwargs) -> int:
    """`fn(*args, **kwargs)` as a command: its int result (None -> 0), or one error line and
    its exit code (`report_failure`); DUET_DEBUG=1 lets the exception through."""
    try:
        return fn(*args, **kwargs) or 0
    except (Exception, KeyboardInterrupt) as error:
        if debug():
            raise
        return report_failure(error, undone=undone)
