"""``espt worker {tiled,analysis,livemap}`` and ``espt status`` (registered in :mod:`espt_bluesky.cli`).

The bus settings come from the session configuration (``[bus]`` of ``$ESPT_CONFIG`` or ``--config FILE``,
``$ESPT_NATS_SERVERS``), overridden by ``--servers``/``--stream``/``--subject``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from .bus import BusConfig


def _bus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="session configuration file (default: $ESPT_CONFIG); its [bus] section")
    p.add_argument("--servers", help="NATS server URL(s), comma-separated (default: [bus] servers)")
    p.add_argument("--stream", help="JetStream stream (default: [bus] stream)")
    p.add_argument("--subject", help="subject prefix of the instrument (default: [bus] subject)")
    p.add_argument("--creds", help="NATS credentials file (default: [bus] creds)")


def _tiled_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uri", help="Tiled URI (default: $ESPT_TILED_URI or the server `espt serve` started)")
    p.add_argument("--api-key", help="Tiled API key (default: $ESPT_TILED_API_KEY or the data directory's key)")
    p.add_argument("--data-dir", help="data directory whose server and key to use")


def bus_config(args: argparse.Namespace) -> BusConfig:
    """The ``[bus]`` section of the configuration with the command line's overrides."""
    from ..session import load_config

    section = dict(load_config(args.config)["bus"])
    for key in ("servers", "stream", "subject", "creds"):
        v = getattr(args, key, None)
        if v:
            section[key] = v.split(",") if key == "servers" else v
    section = {k: v for k, v in section.items() if k in BusConfig.__dataclass_fields__}
    return BusConfig.from_mapping(section)


# ---------------------------------------------------------------------------------------------------- worker
def add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a service fed by the document bus (NATS JetStream)",
                       description="Services that consume the documents the acquisition publishes to JetStream "
                                   "(see docs/bus.md). Each keeps a durable consumer: stopped or killed, it "
                                   "continues where it stopped.")
    wsub = p.add_subparsers(dest="worker", metavar="SERVICE", required=True)
    t = wsub.add_parser("tiled", help="write every run to Tiled (each event exactly once)")
    a = wsub.add_parser("analysis", help="write each finished run's product (kappa map, screening, modulus map) "
                                         "to Tiled")
    m = wsub.add_parser("livemap", help="publish the running map for remote displays (core NATS subject "
                                        "<live_subject>.map)")
    for q in (t, a, m):
        _bus_args(q)
        q.add_argument("--durable", help="consumer name (default espt-tiled / espt-analysis / espt-livemap)")
        q.add_argument("--until-idle", type=float, default=None,
                       help="exit after this many seconds without a message (default: run until stopped)")
        q.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    for q in (t, a):
        _tiled_args(q)
        q.add_argument("--ack-wait", type=float, default=None, help="seconds before JetStream redelivers an "
                                                                    "unacknowledged message")
    t.add_argument("--batch", type=int, default=None, help="messages written and acknowledged together (default "
                                                          "1000: at most what the stream holds)")
    a.add_argument("--technique", action="append", help="only runs of this technique (repeatable)")
    m.add_argument("--field", action="append", help="data key to publish (repeatable; default: every scalar)")
    m.add_argument("--interval", type=float, default=0.5, help="least seconds between snapshots")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from ..errors import InvalidArgument
    from ..storage.server import ServerError

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = bus_config(args)
        kw: dict[str, Any] = {}
        if args.durable:
            kw["durable"] = args.durable
        if getattr(args, "ack_wait", None):
            kw["ack_wait"] = args.ack_wait
        if args.worker == "tiled":
            from .tiled_worker import make_tiled_worker

            if args.batch is not None:
                kw["batch"] = args.batch
            w = make_tiled_worker(cfg, uri=args.uri, api_key=args.api_key, data_dir=args.data_dir, **kw)
        elif args.worker == "analysis":
            from .analysis_worker import make_analysis_worker

            w = make_analysis_worker(cfg, uri=args.uri, api_key=args.api_key, data_dir=args.data_dir,
                                     techniques=args.technique, **kw)
        else:
            from .livemap import LiveMapPublisher

            w = LiveMapPublisher(cfg, fields=args.field, interval=args.interval, **kw)
        w.connect()
    except (InvalidArgument, ServerError) as exc:
        print(f"espt worker {args.worker}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - NATS unreachable and the like: one line, not a traceback
        print(f"espt worker {args.worker}: cannot start ({type(exc).__name__}: {exc}); is NATS JetStream at "
              f"{', '.join(cfg.servers)} running?", file=sys.stderr)
        return 1
    w.install_signal_handlers()
    print(f"espt worker {args.worker}: consumer {w.durable} on stream {cfg.stream}, subject {w.filter_subject} "
          f"(pid {__import__('os').getpid()})", flush=True)
    try:
        w.run(until_idle=args.until_idle)
    finally:
        w.close()
    print(f"espt worker {args.worker}: stopped after {w.handled} messages", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------- status
def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="check the data pipeline: bus, stream, consumer lag, last run, Tiled",
                       description="Print the document stream (messages, bytes, limits), each consumer's lag, the "
                                   "last run published, whether Tiled answers, and runs waiting in the local "
                                   "backup. Exit code 1 if the bus or Tiled does not answer.")
    _bus_args(p)
    _tiled_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)


async def _bus_status(cfg: BusConfig) -> dict:
    import nats
    from nats.js.errors import NotFoundError

    from .bus import unpack
    from .consumer import consumer_lag

    nc = await nats.connect(**{**cfg.connect_options(), "allow_reconnect": False, "max_reconnect_attempts": 0})
    try:
        js = nc.jetstream()
        out: dict[str, Any] = {"reachable": True, "server": nc.connected_url.netloc if nc.connected_url else None}
        try:
            info = await js.stream_info(cfg.stream)
        except NotFoundError:
            out["stream_state"] = None
            return out
        st, c = info.state, info.config
        out["stream_state"] = {"name": cfg.stream, "messages": st.messages, "bytes": st.bytes, "first_seq": st.first_seq,
                         "last_seq": st.last_seq, "max_age_s": c.max_age, "max_bytes": c.max_bytes,
                         "subjects": c.subjects}
        out["consumers"] = [x for x in await consumer_lag(js, cfg) if x["filter"] in (None, "")
                            or x["filter"].startswith(cfg.subject)]
        for name in ("start", "stop"):
            try:
                msg = await js.get_last_msg(cfg.stream, cfg.subject_of(name))
                doc = unpack(msg.data)
                out[f"last_{name}"] = {"seq": msg.seq, "uid": doc.get("uid"), "run_start": doc.get("run_start"),
                                       "time": doc.get("time"), "plan_name": doc.get("plan_name"),
                                       "exit_status": doc.get("exit_status")}
            except NotFoundError:
                out[f"last_{name}"] = None
        return out
    finally:
        await nc.close()


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from ..storage.server import LocalCatalog, server_alive

    cfg = bus_config(args)
    report: dict[str, Any] = {"bus": {"servers": cfg.servers, "stream": cfg.stream, "subject": cfg.subject}}
    try:
        report["bus"].update(asyncio.run(asyncio.wait_for(_bus_status(cfg), cfg.connect_timeout + 10)))
    except Exception as exc:  # noqa: BLE001
        report["bus"].update(reachable=False, error=f"{type(exc).__name__}: {exc}")
    tiled: dict[str, Any] = {}
    try:
        cat = LocalCatalog.connect(args.uri, args.api_key, args.data_dir)
        tiled = {"uri": cat.uri, "reachable": server_alive(f"{cat.base_url}/healthz", timeout=2.0)}
        backup = cat.backup_dir
    except Exception as exc:  # noqa: BLE001
        tiled = {"uri": None, "reachable": False, "error": f"{type(exc).__name__}: {exc}"}
        backup = None
    report["tiled"] = tiled
    if backup is not None and backup.is_dir():
        from ..storage.journal import journal_in_use

        files = sorted(backup.glob("*.journal"))
        report["backup"] = {"dir": str(backup), "waiting": sum(not journal_in_use(f) for f in files),
                            "in_use": sum(journal_in_use(f) for f in files)}
    ok = bool(report["bus"].get("reachable")) and bool(tiled.get("reachable"))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0 if ok else 1
    print(_format_status(report))
    return 0 if ok else 1


def _format_status(r: dict) -> str:
    b, t = r["bus"], r["tiled"]
    lines = []
    if b.get("reachable"):
        lines.append(f"bus:       {b.get('server')} OK")
        s = b.get("stream_state")
        if s is None:
            lines.append(f"stream:    {b['stream']} does not exist yet (created by the first publisher or worker)")
        else:
            age = f"{s['max_age_s'] / 86400:g} d" if s.get("max_age_s") else "no age limit"
            lines.append(f"stream:    {s['name']}: {s['messages']} messages, {s['bytes'] / 2**20:.1f} MiB "
                         f"(seq {s['first_seq']}-{s['last_seq']}; limits {age}, "
                         f"{s['max_bytes'] / 2**30:.1f} GiB)")
            for c in b.get("consumers", []):
                lines.append(f"consumer:  {c['consumer']:<16} lag {c['pending']} undelivered, "
                             f"{c['unacknowledged']} unacknowledged (filter {c['filter']})")
            if not b.get("consumers"):
                lines.append("consumer:  none (no worker has run yet): documents wait in the stream")
            ls, lp = b.get("last_start"), b.get("last_stop")
            if ls:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ls["time"])) if ls.get("time") else "?"
                ended = lp is not None and lp.get("run_start") == ls.get("uid")
                lines.append(f"last run:  {ls['uid']} ({ls.get('plan_name')}, started {when}; "
                             + (f"ended {lp.get('exit_status')})" if ended else "still running or no stop)"))
    else:
        lines.append(f"bus:       UNREACHABLE {', '.join(b['servers'])}: {b.get('error')}")
    if t.get("reachable"):
        lines.append(f"tiled:     {t['uri']} OK")
    else:
        lines.append(f"tiled:     UNREACHABLE {t.get('uri') or ''} {t.get('error', '')}".rstrip())
    if "backup" in r:
        bk = r["backup"]
        lines.append(f"backup:    {bk['waiting']} run(s) waiting in {bk['dir']}"
                     + (f" (send with: espt replay {bk['dir']})" if bk["waiting"] else "")
                     + (f"; {bk['in_use']} being written" if bk["in_use"] else ""))
    return "\n".join(lines)
