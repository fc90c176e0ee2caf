"""``unipbench adapters``: the registered adapters, their sizes and checkpoint formats."""

from __future__ import annotations

import argparse
import json

from bench.backbones.adapter import get_adapter, list_adapters


def adapters_table() -> list[dict]:
    rows = []
    for name in list_adapters():
        a = get_adapter(name)
        rows.append(
            {
                "adapter": name,
                "description": a.description,
                "sizes": [a.letter(s) for s in a.published_sizes],
                "formats": [{"name": f.name, "description": f.description} for f in a.formats],
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = adapters_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['adapter']:<10} sizes {'/'.join(r['sizes']):<8} {r['description']}")
        for f in r["formats"]:
            print(f"    format {f['name']:<9} {f['description']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="list adapters, sizes and checkpoint formats")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)
