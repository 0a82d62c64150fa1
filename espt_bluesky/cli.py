"""The ``espt`` command.

Subcommands
-----------
``espt serve``
    Start the persistent local Tiled server on the data directory and print its URI and browse URL.
``espt replay DIR``
    Send the runs backed up in DIR (TiledWriter's backup directory) to Tiled; safe to repeat.
``espt worker {tiled,analysis,livemap}`` / ``espt status``
    Services fed by the document bus (NATS JetStream) and a check of the pipeline (:mod:`espt_bluesky.workers.cli`).
``espt demo`` / ``espt ioc``
    Owned by other modules (see the marked section below).

Each subcommand is a pair ``add_<name>(subparsers)`` / ``cmd_<name>(args) -> int`` registered in
:data:`COMMANDS`; add a new one by writing the pair and appending it there.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable

from .correlate.cli import add_import

# ====================================================================================================== storage
def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the local Tiled server (own process) and print its URI",
                       description="Start `tiled serve config` on the data directory (catalog, arrays, tables, "
                                   "readable assets) bound to 127.0.0.1, print the URI, and wait (Ctrl-C stops).")
    p.add_argument("--data-dir", help="data directory (default: $ESPT_DATA_DIR or the per-user data dir)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    p.add_argument("--catalog-uri", help="catalog database, e.g. postgresql://user@host:5432/db "
                                         "(default: SQLite in the data directory)")
    p.add_argument("--table-uri", help="writable table store (default: DuckDB in the data directory, or the "
                                       "PostgreSQL catalog database)")
    p.add_argument("--public", action="store_true",
                   help="let anyone who can reach the server read every run without the API key (writing still "
                        "needs it); off by default -- an explicit opt-in, see docs/storage.md")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .storage.server import LocalCatalog, ServerError

    try:
        cat = LocalCatalog.start(args.data_dir, port=args.port or None, host=args.host,
                                 catalog_uri=args.catalog_uri, table_uri=args.table_uri, public=args.public)
    except ServerError as exc:
        print(f"espt serve: {exc}", file=sys.stderr)
        return 1
    dd = cat.data_dir
    print(f"Tiled server running (pid {cat.process.pid})")
    print(f"  URI:        {cat.uri}")
    print(f"  Browse:     {cat.browse_url}")
    print(f"  API key:    in {cat.key_hint}; log a browser in once with {cat.browse_url}?api_key=<the key>")
    if args.public:
        print("  PUBLIC:     anyone who can reach this address may read every run without the key")
    print(f"  Data dir:   {dd.root}")
    print(f"  Assets:     {dd.assets}")
    print(f"  Backup:     {dd.backup}   (replay with: espt replay {dd.backup})")
    print("Ctrl-C stops the server.", flush=True)

    def _stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        code = cat.process.wait()
        print(f"the Tiled server exited with code {code}; see {dd.logs / 'server.log'}", file=sys.stderr)
        cat.stop()
        return 1
    except KeyboardInterrupt:
        cat.stop()
        print("stopped")
        return 0


def add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="send backed-up runs to Tiled (idempotent)",
                       description="Write every run backed up in DIR to Tiled: runs complete in Tiled are skipped, a "
                                   "partial copy is replaced only by a backup that holds strictly more; every "
                                   "run's events per stream, exit status and any damage found are printed. "
                                   "Backup files are never changed.")
    p.add_argument("dir", help="backup directory (the data directory's backup/)")
    p.add_argument("--uri", help="Tiled URI (default: $ESPT_TILED_URI or the server `espt serve` started)")
    p.add_argument("--api-key", help="API key (default: from the URI, $ESPT_TILED_API_KEY or the data dir)")
    p.add_argument("--data-dir", help="data directory whose server and key to use")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from .errors import InvalidArgument
    from .storage.replay import replay
    from .storage.server import LocalCatalog, ServerError

    try:
        cat = LocalCatalog.connect(args.uri, args.api_key, args.data_dir)
        client = cat.client()
    except (ServerError, InvalidArgument) as exc:
        print(f"espt replay: {exc}", file=sys.stderr)
        return 1
    report = replay(args.dir, client)
    print(report)
    for entry in report.runs:
        print(f"  {entry}", file=sys.stderr if entry.action == "failed" else sys.stdout)
    return 1 if report.failed else 0


# ====================================================================================================== other commands
# `espt demo` (espt_bluesky.demo) and `espt ioc` (espt_bluesky.ioc).
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a complete simulated experiment into the local catalog, save figures",
                       description="SECCM screen over HOPG (approach, hopping CVs, passivation clusters) and an "
                                   "SECM image over patterned Au/SiO2, written to the local Tiled catalog; "
                                   "figures saved as PNG.")
    p.add_argument("--data-dir", help="data directory (default: $ESPT_DATA_DIR or the per-user data dir)")
    p.add_argument("--output", default="espt_output", help="directory for the figures (default ./espt_output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated benches")
    p.add_argument("--time-scale", type=float, default=0.0, help="0: instantly; 1: instrument time")
    p.add_argument("--spots", type=int, default=8, help="the SECCM screen is SPOTS x SPOTS (default 8)")
    p.add_argument("--serve", action="store_true", help="keep serving the catalog after the demo (Ctrl-C stops)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    catalog = None
    if args.serve:
        from .storage.server import LocalCatalog

        catalog = LocalCatalog.start(args.data_dir)
    try:
        run_demo(args.data_dir, args.output, seed=args.seed, time_scale=args.time_scale, n_side=args.spots,
                 catalog=catalog)
        if catalog is not None:
            print(f"serving {catalog.browse_url} (Ctrl-C stops)", flush=True)
            catalog.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if catalog is not None:
            catalog.stop()
    return 0


def add_ioc(sub: argparse._SubParsersAction) -> None:
    from .ioc.cli import add_ioc_parser

    add_ioc_parser(sub).set_defaults(func=cmd_ioc)


def cmd_ioc(args: argparse.Namespace) -> int:
    """``espt ioc {bench,stage,potentiostat} ...``: see :mod:`espt_bluesky.ioc.cli`."""
    from .ioc.cli import run_from_args

    return run_from_args(args)


# ====================================================================================================== registry
def add_qserver(sub: argparse._SubParsersAction) -> None:
    from .qserver import add_qserver as add

    add(sub)


def add_worker(sub: argparse._SubParsersAction) -> None:
    from .workers.cli import add_worker as add

    add(sub)


def add_status(sub: argparse._SubParsersAction) -> None:
    from .workers.cli import add_status as add

    add(sub)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_serve, add_replay, add_demo, add_ioc, add_import,
                                                               add_qserver, add_worker, add_status]


def build_parser() -> argparse.ArgumentParser:
    """The ``espt`` argument parser with every registered subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="espt", description="Electrochemical scanning-probe experiments "
                                                              "with Bluesky and Tiled")
    parser.add_argument("--version", action="version", version=f"espt_bluesky {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``espt`` (no command: print the help)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
