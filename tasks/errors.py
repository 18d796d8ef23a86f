"""The one exception type for mistakes a user can fix (bad config, bad data, missing server)."""


class UserError(Exception):
    """One sentence that names the input and the fix; the CLI prints it without a traceback."""
