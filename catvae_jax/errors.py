"""The exceptions every command turns into one line and an exit code (`cli.user_errors`).

Library code raises :class:`UserError` for mistakes a user can fix (bad config, missing workdir,
bad value): exit 2. Training raises :class:`NonFiniteError` when the loss diverges (exit 1) and
:class:`Preempted` after SIGTERM saved a checkpoint (exit 143). Library callers get ordinary
exceptions. This module imports nothing of catvae_jax, so every command can catch them without
loading the training stack.
"""

from __future__ import annotations

import sys


class UserError(ValueError):
    """A mistake in the user's input, reported as one line with exit code 2 by the CLIs."""


class Preempted(RuntimeError):
    """SIGTERM arrived: a checkpoint of `step` was saved and the run stopped (exit code 143)."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}; checkpoint saved, re-run to resume")
        self.step = step


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/inf at `step`; the run stops (exit code 1)."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss or gradient norm at step {step}; training stopped")
        self.step = step


def exit_with(message: str, code: int = 2) -> None:
    """Prints `message` as one line on stderr and exits with `code`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)
