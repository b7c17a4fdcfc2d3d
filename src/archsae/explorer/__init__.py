"""`archsae serve`: the concept explorer web app over a run directory (nothing below this package imports it)."""

from .app import create_app, serve
from .run import RunView

__all__ = ["RunView", "create_app", "serve"]
