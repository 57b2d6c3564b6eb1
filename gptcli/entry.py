"""The console-script entry point: tiny, so that Ctrl-C while the CLI is still
importing ends quietly with 130 instead of a traceback."""

import sys


def main() -> None:
    try:
        from gptcli.cli import main as cli_main
    except KeyboardInterrupt:
        sys.exit(130)
    cli_main()
