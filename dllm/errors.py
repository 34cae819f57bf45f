"""Errors that mean the user asked for something that cannot be done (a typo, a missing file, a bad flag).

The ``dllm`` command line prints a :class:`UsageError`'s message on one line and exits with status 2, with no
traceback; library callers get an ordinary ``ValueError`` subclass.
"""


class UsageError(ValueError):
    """A mistake in the user's request; the message says what was given and what was expected."""
