"""The ``unipbench`` command line: parses arguments, calls one function, prints.

Built-in commands live in :mod:`bench.commands` (one module per command family, each with
``register(subparsers)``); plug-ins (UNIP's ``analyze``, ``distill``, ``infmix``) add theirs
through the ``unipbench.commands`` entry-point group.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from bench.diskio import os_error_line
from bench.registry import COMMANDS, RegistryError

BUILTIN_COMMAND_MODULES = (
    "bench.commands.adapters",
    "bench.commands.data",
    "bench.commands.checkpoints",
    "bench.commands.train",
    "bench.commands.flops",
    "bench.commands.suite",
    "bench.commands.results",
)


class CommandError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 2."""


def user_message(exc: BaseException) -> str:
    """One line for a user error; pydantic's multi-line reports become 'field: reason'."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        parts = []
        for err in exc.errors():  # type: ignore[attr-defined]
            where = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return f"invalid {getattr(exc, 'title', 'settings')}: " + "; ".join(parts)
    return str(exc)


def build_parser() -> argparse.ArgumentParser:
    from bench import __version__

    parser = argparse.ArgumentParser(
        prog="unipbench",
        description="Benchmark pre-trained ViTs on infrared semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"unip-bench {__version__}")
    parser.add_argument(
        "--trackers", metavar="LIST",
        help="where training curves go: auto (TensorBoard when installed; the default), "
        "none, or a comma list of tensorboard, wandb (sets UNIPBENCH_TRACKERS)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in BUILTIN_COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:  # a command family not present in this install
                continue
            raise
        mod.register(sub)
    for name in COMMANDS.names():
        try:
            COMMANDS.get(name)(sub)
        except RegistryError as exc:  # one broken plug-in must not take the CLI down
            print(f"unipbench: warning: {exc}", file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        if args.trackers is not None:
            from bench.trackers import ENV, tracker_names

            tracker_names(args.trackers)  # refuse an unknown or missing tracker now
            os.environ[ENV] = args.trackers
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted; completed work is kept and a rerun resumes it", file=sys.stderr)
        return 130
    except OSError as exc:
        # Missing, unwritable or read-only paths, a full disk: one line naming the path.
        if getattr(args, "debug", False):
            raise
        print(f"unipbench {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except (CommandError, ValueError, KeyError) as exc:
        # User errors (bad flag, file, YAML, checkpoint) get one clear line, no traceback.
        if getattr(args, "debug", False):
            raise
        print(f"unipbench {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
