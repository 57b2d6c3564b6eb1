"""The console-script entry point: tiny, so that Ctrl-C while the CLI is still
importing ends quietly with 130 instead of a traceback, and a reader of stdout that
went away before the last flush (`gptcli tokenize Hi | true`) ends it with 141."""

import os
import sys

BROKEN_PIPE = 141  # as errors.ExitCode, without importing it before the CLI


def main() -> None:
    try:
        from gptcli.cli import main as cli_main
    except KeyboardInterrupt:
        sys.exit(130)
    code: object = 0
    try:
        cli_main()
    except SystemExit as e:
        code = e.code
    try:
        sys.stdout.flush()  # short outputs sit in the buffer until here
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's own flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = BROKEN_PIPE
    sys.exit(code)
