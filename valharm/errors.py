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


def config_error(err: BaseException) -> str | None:
    """One line for a config group that cannot be built from its settings (a value of the wrong type), naming the
    group and the overrides the user gave for it; None when `err` is something else."""
    from hydra.errors import InstantiationException

    while err is not None and not isinstance(err, InstantiationException):
        err = err.__cause__ or err.__context__
    cause = err.__cause__ if err is not None else None
    if not isinstance(cause, (TypeError, ValueError)):
        return None
    key = next((line.split(":", 1)[1].strip() for line in str(err).splitlines() if line.startswith("full_key:")),
               "a config group")
    given = [a for a in sys.argv[1:] if a.lstrip("+~").startswith(f"{key}.")]
    return (f"{key} cannot be built from its settings ({type(cause).__name__}: {cause}); check the values given "
            f"for it{': ' + ' '.join(given) if given else ''} (numbers, lists and null where the defaults have them)")


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
            found = user_error(err) or config_error(err)
            if found is None:
                raise
            print(f"valharm: error: {found}", file=sys.stderr)
            sys.exit(2)

    return wrapper
