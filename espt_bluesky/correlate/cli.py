"""``espt import FILE ...``: read instrument files and write them to Tiled (nothing written for a bad file)."""

from __future__ import annotations

import argparse
import sys


def add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import instrument files (XRF, Raman, SEM, SECM, SICM, AFM, EC-Lab) into Tiled",
                       description="Read each FILE with the reader of its format (x/y in µm, units, instrument "
                                   "metadata, checksum, frame transform) and write it under imports/ in the "
                                   "catalog, where read_map reads it like a run.  A file that cannot be read is "
                                   "reported and nothing of it is written.")
    p.add_argument("files", nargs="+", metavar="FILE", help="instrument file(s)")
    p.add_argument("--format", dest="fmt", help="importer name, to override detection by extension/content")
    p.add_argument("--key", help="node key under imports/ (one file only; default: file stem + checksum)")
    p.add_argument("--check", action="store_true", help="read and validate only; write nothing")
    p.add_argument("--uri", help="Tiled URI (default: $ESPT_TILED_URI or the server `espt serve` started)")
    p.add_argument("--api-key", help="API key (default: from the URI, $ESPT_TILED_API_KEY or the data dir)")
    p.add_argument("--data-dir", help="data directory whose server and key to use")
    p.set_defaults(func=cmd_import)


def _summary(ds) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in ds.sizes.items())
    x, y = ds["x"].values, ds["y"].values
    span = ""
    if x.size and (x == x).any():
        span = f"; x {float(min(x.min(), x.max())):.4g}..{float(max(x.min(), x.max())):.4g} µm, " \
               f"y {float(min(y.min(), y.max())):.4g}..{float(max(y.min(), y.max())):.4g} µm"
    return f"{ds.attrs.get('technique')} ({ds.attrs.get('importer')}): {dims}{span}; " \
           f"variables {', '.join(list(ds.data_vars)[:6])}{' ...' if len(ds.data_vars) > 6 else ''}"


def cmd_import(args: argparse.Namespace) -> int:
    from .importers import UnreadableFile, read_file

    if args.key and len(args.files) > 1:
        print("espt import: --key names one node; give one FILE with it", file=sys.stderr)
        return 2
    client = None
    failed = 0
    for path in args.files:
        try:
            if args.check:
                print(f"ok       {path}: {_summary(read_file(path, args.fmt))}")
                continue
            if client is None:
                from ..storage.server import LocalCatalog

                client = LocalCatalog.connect(args.uri, args.api_key, args.data_dir).client()
            from .store import import_file

            nodes = import_file(path, client, fmt=args.fmt, key=args.key)
            for node in nodes:
                print(f"imported {path} -> {'/'.join(node.item['attributes']['ancestors'] + [node.item['id']])}"
                      f": {_summary(read_file(path, args.fmt)) if node is nodes[0] else 'white-light image'}")
        except UnreadableFile as exc:
            failed += 1
            print(f"FAILED   {path}: {exc} (nothing written)", file=sys.stderr)
    return 1 if failed else 0
