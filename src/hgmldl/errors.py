"""The one exception type that entry points print as a single line instead of a traceback."""

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """A mistake the user can fix (missing data, corrupt file, bad value); the message says what to do."""

    def _render_traceback_(self) -> list[str]:
        # IPython's hook for an exception's display: a notebook cell shows `error: …`, not a traceback.
        return [f"error: {self}"]


def one_line_errors(main: Callable[P, R]) -> Callable[P, R]:
    """Makes an entry point print a UserError as `error: <message>` and exit with status 1, not a traceback."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            sys.exit(f"error: {error}")

    return wrapper
