"""What every command line of the package shares (`duet-eval`, `duet-convert`, `duet-train`,
`duet-tiny`, `duet-demo` and their `eval.py` / `train.py` / `python -m convert` wrappers).

Bad arguments (missing, unknown, malformed) print one `error: ...` line, then the
usage, on stderr and exit 2; failures the user can fix later on print one line too.
"""
from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one `error: ...` line first, then the usage (subparsers inherit it)."""

    def error(self, message):
        message = " ".join(str(message).split())
        sys.stderr.write(f"error: {message}\n{self.format_usage()}"
                         f"(see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)
