"""Progress of long work, visible wherever it runs: a tqdm bar on a terminal, a plain line now and then elsewhere.

In a log file or a CI job a redrawn bar is noise, and no output at all looks like a hang; there a line such as
``train: 120/1000 steps (12%), 3.2 steps/s, ETA 4m35s, loss=2.31`` is printed every ``every_s`` seconds and at the
end. ``BRAMLEY_PROGRESS=0`` silences both; ``=1`` forces the plain lines.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal, TextIO

__all__ = ["Progress", "progress", "track"]


class Progress:
    """A counter toward ``total`` that reports itself; use :func:`progress` to make one."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        initial: int,
        every_s: float,
        file: TextIO,
        mode: Literal["bar", "lines", "off"],
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every_s, self.file, self.mode = every_s, file, mode
        self.postfix: dict[str, Any] = {}
        self._start_n, self._start = initial, time.perf_counter()
        self._last_line = self._start
        self._bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=file)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and time.perf_counter() - self._last_line >= self.every_s:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the counter (e.g. ``loss=2.31``)."""
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix(values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.n > self._start_n:
            self._print()

    def line(self) -> str:
        """The status line: count, percentage, rate, ETA and the postfix values."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        if self.postfix:
            text += ", " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        return text

    def _print(self) -> None:
        self._last_line = time.perf_counter()
        print(self.line(), file=self.file, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress(
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    every_s: float = 30.0,
    file: TextIO | None = None,
) -> Progress:
    """A progress reporter on ``file`` (stderr): a tqdm bar when it is a terminal, else a line every ``every_s``."""
    file = file or sys.stderr
    setting = os.environ.get("BRAMLEY_PROGRESS", "")
    terminal = hasattr(file, "isatty") and file.isatty()
    mode = "off" if setting == "0" else "lines" if setting == "1" or not terminal else "bar"
    return Progress(total, desc, unit, initial, every_s, file, mode)


def track(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator:
    """Iterate ``iterable`` while reporting :func:`progress` (``total`` from ``len()`` when it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with progress(total, desc, unit) as reporter:
        for item in iterable:
            yield item
            reporter.update()
