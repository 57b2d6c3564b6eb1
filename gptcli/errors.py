"""The one user-facing error type, and the exit codes gptcli uses."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # a runtime failure: missing file, bad model, network
    USAGE = 2  # the command line or its input is wrong
    CTRL_C = 130  # 128 + SIGINT
    BROKEN_PIPE = 141  # 128 + SIGPIPE
    SIGTERM = 143  # 128 + SIGTERM


class GptcliError(Exception):
    """An error to show the user as one line on stderr, then exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = ExitCode.ERROR):
        super().__init__(message)
        self.message = message
        self.exit_code = int(exit_code)


class UsageError(GptcliError):
    """Bad input from the user: exits 2."""

    def __init__(self, message: str):
        super().__init__(message, ExitCode.USAGE)


class Terminated(BaseException):
    """Raised from the SIGTERM handler so generation stops like on Ctrl-C."""
