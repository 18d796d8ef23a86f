"""The one exception type for mistakes a user can fix (bad config, bad data, missing server), and the reading of a
setting from the environment that raises it."""

import os


class UserError(Exception):
    """One sentence that names the input and the fix; the CLI prints it without a traceback."""


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from environment variable `name` (`default` when unset); anything else is a UserError."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise UserError(
            f"{name}={os.environ[name]!r} is not a number of seconds: set it to e.g. {default:g}, or unset it"
        ) from None
