"""The one exception type for mistakes a user can fix (bad config, missing workdir, bad value).

Library code raises :class:`UserError`; every CLI catches it once, prints its one-line message
and exits with status 2. Library callers get an ordinary exception.
"""

from __future__ import annotations

import sys


class UserError(ValueError):
    """A mistake in the user's input, reported as one line with exit code 2 by the CLIs."""


def exit_with(message: str, code: int = 2) -> None:
    """Prints `message` as one line on stderr and exits with `code`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)
