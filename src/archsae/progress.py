"""Progress bars: tqdm's keyword arguments shared by every long-running step."""

from __future__ import annotations

import sys


def quiet(short: bool) -> dict:
    """tqdm's arguments: no bar for short work; else tqdm's default on a terminal, and one update per 30 s when
    stderr goes to a file or pipe (a log would otherwise get ten carriage-return updates a second; maxinterval
    too, or tqdm's monitor thread refreshes every 10 s). Never an explicit disable=False, so TQDM_DISABLE=1
    still silences every bar."""
    if short:
        return {"disable": True}
    terminal = sys.stderr is not None and sys.stderr.isatty()
    return {} if terminal else {"mininterval": 30.0, "maxinterval": 30.0}
