#!/usr/bin/env python
"""Run ``unipbench gpu-check`` from a checkout without installing the command.

    python scripts/gpu_check.py --out gpu-check.json      # on a GPU machine, < 5 minutes
    python scripts/gpu_check.py --cpu                      # tiny models on the CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.commands.gpu_check import add_arguments, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as exc:  # bad flag values, paths: one line, as the CLI does
        print(f"gpu_check.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
