"""``unipbench checkpoints list | fetch ID... | verify [ID|PATH ...]``: the catalogue."""

from __future__ import annotations

import argparse
import json
import sys

ENV_HELP = (
    "Files go to $UNIPBENCH_CACHE/checkpoints (default ~/.cache/unipbench/checkpoints); "
    "digests are pinned in $UNIPBENCH_LOCK (default ./checkpoints.lock), the lock that "
    "loading an id reads."
)


def list_rows(show_all: bool = True) -> list[dict]:
    from bench.checkpoints.cache import status
    from bench.checkpoints.catalogue import load_catalogue
    from bench.checkpoints.lock import read_lock

    pins = read_lock()
    rows = []
    for cid, e in sorted(load_catalogue().items()):
        if not show_all and not e.paper:
            continue
        rows.append({
            "id": cid, "adapter": e.adapter, "size": e.size, "name": e.label,
            "format": e.format, "file": e.file, "url": e.download_url, "licence": e.licence,
            "sha256": e.sha256, "sha256_prefix": e.sha256_prefix, "md5_prefix": e.md5_prefix,
            "paper": e.paper, "unavailable": e.unavailable, "source": e.source,
            "status": status(e, pins),
        })
    return rows


def run_list(args: argparse.Namespace) -> int:
    rows = list_rows(show_all=not args.paper)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':<24} {'size':<4} {'format':<13} {'licence':<13} status")
    for r in rows:
        mark = " *" if r["paper"] else ""
        print(f"{r['id']:<24} {r['size']:<4} {r['format'] or '-':<13} {r['licence']:<13} "
              f"{r['status']}{mark}")
    print("* used by suites/paper/*.yaml; `--json` gives URLs, digests and sources")
    return 0


def _suite_ids(path: str) -> list[str]:
    from bench.checkpoints.catalogue import is_catalogue_id
    from bench.suites.load import load_suite

    return [m.checkpoint for m in load_suite(path).spec.models if is_catalogue_id(m.checkpoint)]


def run_fetch(args: argparse.Namespace) -> int:
    from bench.checkpoints.cache import fetch
    from bench.checkpoints.catalogue import get_entry
    from bench.checkpoints.lock import lock_path
    from bench.checkpoints.reader import CheckpointError
    from bench.progress import format_bytes

    ids = list(args.ids)
    for suite in args.suite or []:
        ids += _suite_ids(suite)
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ValueError("name at least one checkpoint id (or --suite SUITE); "
                         "`unipbench checkpoints list` shows them")
    for cid in ids:  # every id known before anything downloads
        get_entry(cid)
    failed = 0
    for cid in ids:
        try:
            got = fetch(cid, force=args.force)
        except CheckpointError as exc:
            print(f"unipbench checkpoints fetch: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        pinned = f"pinned in {lock_path()}" if got.pinned_now else "matches its pin"
        print(f"{cid}: {got.how} {format_bytes(got.size)} -> {got.path}; sha256 {got.sha256} "
              f"({pinned})")
    return 2 if failed else 0


def run_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.checkpoints.cache import verify_file, verify_id
    from bench.checkpoints.catalogue import is_catalogue_id, unknown_id_message
    from bench.checkpoints.lock import lock_path, read_lock

    items = list(args.items) or sorted(read_lock())
    if not items:
        print(f"nothing to verify: {lock_path()} pins no checkpoint yet "
              "(`unipbench checkpoints fetch ID` pins what it downloads)")
        return 0
    verdicts = []
    for item in items:
        if is_catalogue_id(item) or item in read_lock():
            verdicts.append(verify_id(item))
        elif Path(item).is_file():
            verdicts.append(verify_file(Path(item)))
        else:
            raise ValueError(unknown_id_message(item) or f"{item} is neither a catalogue id "
                             "nor a file")
    for v in verdicts:
        print(f"{'ok  ' if v.ok else 'FAIL'} {v.what}: {v.message}",
              file=sys.stdout if v.ok else sys.stderr)
    bad = sum(not v.ok for v in verdicts)
    if bad:
        print(f"{bad} of {len(verdicts)} checkpoint(s) failed", file=sys.stderr)
    return 1 if bad else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "checkpoints", help="the checkpoint catalogue: list, fetch and verify published weights",
        description="Published checkpoints by id (bench/checkpoints/catalogue.yaml). " + ENV_HELP,
    )
    cmds = p.add_subparsers(dest="checkpoints_command", metavar="ACTION", required=True)

    ls = cmds.add_parser("list", help="every catalogue id, its format, licence and status")
    ls.add_argument("--json", action="store_true", help="JSON with URLs, digests and sources")
    ls.add_argument("--paper", action="store_true", help="only those the paper's suites use")
    ls.set_defaults(func=run_list)

    f = cmds.add_parser(
        "fetch", help="download ids into the cache (resumable), verify and pin them",
        description="Download catalogue checkpoints, check the publisher's digests and pin "
        "each file's sha256. An interrupted download is kept as FILE.part and resumed. "
        + ENV_HELP,
    )
    f.add_argument("ids", nargs="*", metavar="ID", help="catalogue ids, e.g. mae/vit-base")
    f.add_argument("--suite", action="append", metavar="SUITE",
                   help="also every id the suite's models name (repeatable)")
    f.add_argument("--force", action="store_true",
                   help="download again even when the cached file is fine")
    f.set_defaults(func=run_fetch)

    v = cmds.add_parser(
        "verify", help="re-hash cached checkpoints (or given files) against pins and digests",
        description="Without arguments: every checkpoint pinned in the lock, re-read in full. "
        "An ID checks its cached file; a PATH (e.g. a file downloaded by hand) is matched to "
        "the catalogue by its digests. Exits 1 if any fails. " + ENV_HELP,
    )
    v.add_argument("items", nargs="*", metavar="ID|PATH")
    v.set_defaults(func=run_verify)
