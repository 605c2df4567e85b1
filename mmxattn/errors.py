"""User-facing errors: each names the file, line or config key at fault and says how to fix it.

The CLIs catch `MmxError` and print its message without a traceback, because these are the user's
mistakes, not ours.
"""


class MmxError(Exception):
    """Base class for errors caused by user input (data, config, arguments)."""

    exit_code = 2  # what the CLIs exit with after printing the message


class TrainingInterrupted(MmxError):
    """A run stopped before it finished (SIGTERM: preemption, a time limit, `kill`); it can be resumed.

    Exits 143 (128 + SIGTERM), as a process killed by the signal would, so that a scheduler or a shell
    script never mistakes the unfinished run for a finished one.
    """

    exit_code = 143


class ConfigError(MmxError, ValueError):
    """A config value is missing, invalid, or inconsistent with another one."""


class DataError(MmxError, ValueError):
    """A data file is missing, unreadable or malformed."""


class PluginError(MmxError, RuntimeError):
    """An encoder plugin is unknown, broken, or violates the plugin contract."""
