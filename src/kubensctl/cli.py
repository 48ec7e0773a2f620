"""Command line: one ``main()`` that maps typed errors to exit codes.

Each room module registers its own subcommands through ``add_commands(subparsers)``; handlers take the
parsed namespace and return an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, NoReturn, Optional, Sequence

from kubensctl import __version__
from kubensctl.errors import EXIT_ERROR, EXIT_USAGE, KubensError

# Rooms that contribute subcommands, in help order.
ROOMS = (
    "kubensctl.namespace",
    "kubensctl.status",
    "kubensctl.measure",
    "kubensctl.metrics",
    "kubensctl.units",
    "kubensctl.install",
    "kubensctl.manifests",
    "kubensctl.cluster",
)

# Which room registers each top-level command: a run imports only the room it needs (start-up time
# matters for status on big nodes); --help and unknown commands import them all.
COMMAND_ROOMS = {
    "start": "kubensctl.namespace",
    "stop": "kubensctl.namespace",
    "status": "kubensctl.status",
    "mounts": "kubensctl.status",
    "bench": "kubensctl.measure",
    "watchers": "kubensctl.measure",
    "metrics": "kubensctl.metrics",
    "wrap": "kubensctl.units",
    "unwrap": "kubensctl.units",
    "exec-start": "kubensctl.units",
    "install": "kubensctl.install",
    "uninstall": "kubensctl.install",
    "machineconfig": "kubensctl.manifests",
    "daemonset": "kubensctl.manifests",
    "cluster": "kubensctl.cluster",
}

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that prints one line (problem and fix) and exits 2 on bad usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _rooms_for(argv: Sequence[str]) -> Sequence[str]:
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMAND_ROOMS and not any(a in ("-h", "--help") for a in argv[: argv.index(command)]):
        return (COMMAND_ROOMS[command],)
    return ROOMS


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kubensctl",
        description="Install, verify, inspect, roll out and measure Kubernetes mount namespace encapsulation.",
    )
    parser.add_argument("--version", action="version", version=f"kubensctl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for room in ROOMS if argv is None else _rooms_for(argv):
        importlib.import_module(room).add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list or os.environ.get("KUBENSCTL_DEBUG") == "1"
    try:
        parser = build_parser(args_list)
        args = parser.parse_args(args_list)
        handler: Handler = args.func
        return handler(args)
    except KubensError as e:
        if debug:
            raise
        print(f"kubensctl: {e.line()}", file=sys.stderr)
        return e.exit_code
    except PermissionError as e:
        if debug:
            raise
        print(f"kubensctl: {e} (run as root)", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        if debug:
            raise
        print(f"kubensctl: {e} (rerun with --debug for details)", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("kubensctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
