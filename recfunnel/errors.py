"""The project's one error family: every error whose message tells the user what to fix.

The CLI prints such an error as one line on stderr and exits 2 (no traceback). A leaf module:
every layer may import it, and it imports nothing of the project.
"""


class RecfunnelError(Exception):
    """Base of the errors that name the input, what was wrong and what would be right."""


class ConfigError(RecfunnelError, ValueError):
    """A configuration names an unknown setting, or gives one a value of the wrong type or
    outside its allowed values."""
