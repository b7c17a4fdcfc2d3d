"""Progress bars: tqdm's keyword arguments shared by every long-running step."""

from __future__ import annotations


def quiet(short: bool) -> dict:
    """tqdm's arguments: no bar for short work, else tqdm's default, so TQDM_DISABLE=1 still silences it (an
    explicit disable=False would override the environment variable)."""
    return {"disable": True} if short else {}
