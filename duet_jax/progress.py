"""Progress output, one rule for every loop of the package (conversion, training, evaluation):
a tqdm bar when the stream is a terminal, else one plain line per `PERCENT_STEP` % of the
work (and one at the end), so CI logs and `make demo > log` stay readable.

    bar = progress_bar(total=len(items), desc="eval", unit="q")
    bar.update(); bar.set_postfix_str("12.3 tok/s"); bar.close()

`enabled`: True shows progress (bar or lines), False shows nothing, None shows the bar
on a terminal and nothing elsewhere (library calls that log nothing unless interactive).
"""
from __future__ import annotations

import sys
import time
from typing import Optional

PERCENT_STEP = 10


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):     # closed or not a real stream
        return False


def progress_bar(total: Optional[int], desc: str, unit: str = "it", *, enabled: Optional[bool] = True,
                 initial: int = 0, file=None, percent_step: int = PERCENT_STEP):
    """A tqdm bar, a `LineProgress` or a silent tqdm, after `enabled` and the stream."""
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    terminal = is_terminal(file)
    if enabled is False or (enabled is None and not terminal):
        return tqdm(total=total, disable=True)
    if terminal:
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file,
                    mininterval=1.0, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial=initial, file=file, percent_step=percent_step)


class LineProgress:
    """tqdm's `update / set_postfix / set_postfix_str / write / close` as one line per step of
    `percent_step` % crossed (`desc: 40% 4/10 q [12 s] postfix`), flushed at once."""

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", *, initial: int = 0,
                 file=None, percent_step: int = PERCENT_STEP):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._shown = initial
        self.file = sys.stderr if file is None else file
        self.step = max(1, int(percent_step))
        self._next = self._percent(initial) // self.step * self.step + self.step
        self.postfix = ""
        self._start = time.perf_counter()
        self._closed = False

    def _percent(self, n: int) -> int:
        return int(100 * n // self.total) if self.total else 0

    def _line(self) -> None:
        total = f"/{self.total}" if self.total else ""
        percent = f"{self._percent(self.n):3d}% " if self.total else ""
        postfix = f" {self.postfix}" if self.postfix else ""
        self.file.write(f"{self.desc}: {percent}{self.n}{total} {self.unit} "
                        f"[{time.perf_counter() - self._start:.0f} s]{postfix}\n")
        self.file.flush()
        self._shown = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self._percent(self.n) >= self._next:
            self._next = self._percent(self.n) // self.step * self.step + self.step
            self._line()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def write(self, message: str) -> None:
        """A message on its own line (tqdm.write's place in a log)."""
        self.file.write(f"{message}\n")
        self.file.flush()

    def close(self) -> None:
        if not self._closed and self.n != self._shown:
            self._line()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
