"""The one exception type for the user's mistakes (DESIGN.md, Conventions)."""


class ArchsaeError(Exception):
    """Bad input or an impossible setting. The message says what is wrong and how to fix it.

    The CLI prints it on one line and exits with status 2, without a traceback.
    """
