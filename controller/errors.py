"""Errors that carry a message meant for the user (printed without a traceback)."""


class VethguardError(Exception):
    """A failure with a clear, user-facing explanation."""
