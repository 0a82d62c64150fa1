"""``espt ioc ...`` / ``python -m espt_bluesky.ioc``: start a caproto IOC serving the simulated bench.

Examples
--------
One process, stage and potentiostat over one model (PVs ``ESPT:stage:*`` and ``ESPT:pstat:*``)::

    EPICS_CA_SERVER_PORT=5070 python -m espt_bluesky.ioc bench --prefix ESPT: --interfaces 127.0.0.1

Split layout (two processes, distinct server ports; the potentiostat reads the stage's tip position over CA)::

    EPICS_CA_SERVER_PORT=5070 python -m espt_bluesky.ioc stage --prefix ESPT:stage: --seed 1
    EPICS_CA_SERVER_PORT=5072 EPICS_CA_AUTO_ADDR_LIST=NO EPICS_CA_ADDR_LIST=127.0.0.1:5070 \\
        python -m espt_bluesky.ioc potentiostat --prefix ESPT:pstat: --stage-prefix ESPT:stage: --seed 1

Both processes of the split layout must be given the same technique, sample, seed and options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

ROLES = ("bench", "stage", "potentiostat")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("role", choices=ROLES, help="bench: stage+potentiostat in one process; stage; potentiostat")
    p.add_argument("--prefix", default=None,
                   help="PV prefix (default: 'ESPT:' for bench, 'ESPT:stage:' for stage, "
                        "'ESPT:pstat:' for potentiostat)")
    p.add_argument("--stage-prefix", default="ESPT:stage:", help="potentiostat role: prefix of the stage IOC")
    p.add_argument("--technique", default="SECM", help="SECM | SICM | SECCM | EC-AFM")
    p.add_argument("--sample", default="patterned", help="sample preset (patterned, hopg, composite_cathode, si_film)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample and every noise source")
    p.add_argument("--options", default="{}", help="JSON object of BenchOptions fields, e.g. '{\"noise\": 0}'")
    p.add_argument("--probe", default=None, help="JSON object of ProbeGeometry fields (default: the technique's probe)")
    p.add_argument("--start", type=float, nargs=2, default=(50.0, 50.0), metavar=("X", "Y"),
                   help="lateral start position of the tip, µm")
    p.add_argument("--time-scale", type=float, default=0.0, help="0: instant; 1: real instrument time")
    p.add_argument("--interfaces", nargs="+", default=["127.0.0.1"], help="interfaces to serve on")
    p.add_argument("--port", type=int, default=None,
                   help="Channel Access server port (sets EPICS_CA_SERVER_PORT; default: its current value or 5064)")
    p.add_argument("--quiet", action="store_true", help="log warnings only")


def add_ioc_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``ioc`` subcommand to an ``argparse`` subparsers object (called by ``espt_bluesky.cli``)."""
    p = subparsers.add_parser("ioc", help="serve the simulated bench over EPICS Channel Access (caproto)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run_from_args)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """Build the model and serve the PVs until interrupted."""
    if args.port is not None:
        os.environ["EPICS_CA_SERVER_PORT"] = str(args.port)
    # caproto batches monitor updates that follow each other within this time (default 10 ms); a motor move is a
    # burst of updates ending with DMOV=1, so the default adds tens of ms per move.  Read when caproto is imported.
    os.environ.setdefault("CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC", "0.0005")
    import logging

    from caproto.server import run

    from .bench_ioc import build_model, enable_tcp_nodelay, make_pvdb

    enable_tcp_nodelay()

    if args.quiet:
        logging.getLogger("caproto").setLevel(logging.WARNING)
    prefix = args.prefix or {"bench": "ESPT:", "stage": "ESPT:stage:", "potentiostat": "ESPT:pstat:"}[args.role]
    model = build_model(args.technique, args.sample, args.seed, json.loads(args.options),
                        json.loads(args.probe) if args.probe else None, tuple(args.start))
    pvdb = make_pvdb(args.role, prefix, model, args.time_scale, args.stage_prefix)
    print(f"espt ioc {args.role}: {len(pvdb)} PVs with prefix {prefix!r} on "
          f"{','.join(args.interfaces)}:{os.environ.get('EPICS_CA_SERVER_PORT', '5064')}", flush=True)
    run(pvdb, module_name="caproto.asyncio.server", interfaces=list(args.interfaces),
        log_pv_names=False, startup_hook=None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m espt_bluesky.ioc``."""
    p = argparse.ArgumentParser(prog="python -m espt_bluesky.ioc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_from_args(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
