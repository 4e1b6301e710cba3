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

import re
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress"]

#: Seconds between two progress lines in a non-interactive log.
LOG_INTERVAL_S = 10.0
_LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:3.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # ANSI cursor movement (tqdm's stacked bars)


class _Lines:
    """A stream wrapper that turns tqdm's ``\\r``-redraws into whole lines: each non-empty status
    becomes one line ending in ``\\n`` (tqdm's padding spaces and, for stacked bars, its
    cursor-movement escape codes stripped)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        for part in _ESCAPE.sub("", s).replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


class _Bar(tqdm):
    @staticmethod
    def format_meter(*args, **kwargs) -> str:
        # A bar's total may be set after it starts (bar.total += n); the log line then follows it.
        total = kwargs["total"] if "total" in kwargs else args[1]
        if kwargs.get("bar_format") == _LOG_FORMAT and not total:
            kwargs["bar_format"] = _LOG_FORMAT_NO_TOTAL
        return tqdm.format_meter(*args, **kwargs)

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
    # Stacked bars (position=1, ...) move the cursor with escape codes; in a log each bar simply
    # writes its own lines.
    kwargs.pop("position", None)
    return _Bar(iterable, total=total, desc=desc, unit=unit, disable=disable, file=_Lines(stream), ascii=True,
                mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, bar_format=_LOG_FORMAT, **kwargs)
