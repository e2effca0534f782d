"""The one exception type that entry points print as a single line instead of a traceback."""


class UserError(Exception):
    """A mistake the user can fix (missing data, corrupt file, bad value); the message says what to do."""
