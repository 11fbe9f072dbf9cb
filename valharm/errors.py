"""One error type for mistakes a user can fix, and a wrapper that reports it cleanly."""
from __future__ import annotations

import functools
import sys


class ValharmError(Exception):
    """A problem with the user's input (config, data, paths); the message says what, where and how to fix."""


def user_error(err: BaseException) -> ValharmError | None:
    """The ValharmError behind `err`, also when Hydra's instantiate wrapped it."""
    while err is not None:
        if isinstance(err, ValharmError):
            return err
        err = err.__cause__ or err.__context__
    return None


def report_errors(func):
    """Print a ValharmError as one line on stderr and exit 2 instead of a traceback; Ctrl-C exits 130 without one
    (the job has said how to resume)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as err:
            found = user_error(err)
            if found is None:
                raise
            print(f"valharm: error: {found}", file=sys.stderr)
            sys.exit(2)

    return wrapper
