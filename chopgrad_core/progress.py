"""Progress bars that stay readable in log files.

    for step in progress(range(steps), desc="finetune sr", unit="step"):
        ...
        bar.set_postfix(loss=f"{loss:.4f}")     # never forces a redraw by itself

On a terminal (``isatty()`` of the stream, ``sys.stderr`` by default) this is an ordinary
interactive tqdm bar. Anywhere else (a log file, CI, ``make train > log``) tqdm's carriage-return
redraws would pile up as thousands of updates on one line, so the bar instead writes one plain
ASCII line (no bar graphic, no ``\\r``) at most every :data:`LOG_INTERVAL_S` seconds, plus the
first and the last. One function for chopgrad_core's heads and drivegen's stages alike.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress"]

#: Seconds between two progress lines in a non-interactive log.
LOG_INTERVAL_S = 10.0
_LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:3.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class _Lines:
    """A stream wrapper that turns tqdm's ``\\r``-redraws into whole lines: each non-empty status
    becomes one line ending in ``\\n`` (tqdm's padding spaces stripped)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        for part in s.replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


class _Bar(tqdm):
    # set_postfix / set_description redraw at once by default: at every step of a loop that calls
    # them, which defeats the rate limit. Here they only update the text the next redraw shows.
    def set_postfix(self, ordered_dict=None, refresh: bool = False, **kwargs) -> None:
        super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    def set_description(self, desc=None, refresh: bool = False) -> None:
        super().set_description(desc, refresh=refresh)


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, file: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one: ``total`` and ``bar.update(n)``): interactive on
    a terminal, a plain line at most every ``LOG_INTERVAL_S`` seconds otherwise. ``file`` defaults
    to ``sys.stderr``; other keyword arguments go to tqdm."""
    stream = sys.stderr if file is None else file
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # a closed or minimal stream
        interactive = False
    if interactive:
        return _Bar(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream, dynamic_ncols=True,
                    **kwargs)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return _Bar(iterable, total=total, desc=desc, unit=unit, disable=disable, file=_Lines(stream), ascii=True,
                mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S,
                bar_format=_LOG_FORMAT if total else _LOG_FORMAT_NO_TOTAL, **kwargs)
