"""Child process of tests/test_fly_epics.py: the same fly plan on the in-process bench and over a caproto bench IOC
through the ophyd-async EPICS fly devices; prints a JSON summary.  (Its own process: the Channel Access
environment of a process is fixed when its first channel is made.)

Usage: python tests/fly_epics_child.py WORKDIR
"""

import json
import sys
from pathlib import Path

import numpy as np

from espt_bluesky.ioc.launch import IOCProcess, ca_environment, configure_client_env, free_ports

work = Path(sys.argv[1])
PORTS = free_ports(2)
ENV = ca_environment(PORTS[:1], PORTS[1])
ENV["EPICS_CA_MAX_ARRAY_BYTES"] = str(10_000_000)
configure_client_env(ENV)

from bluesky import RunEngine  # noqa: E402

from espt_bluesky.devices import make_sim_bench  # noqa: E402
from espt_bluesky.devices.epics import make_epics_bench  # noqa: E402
from espt_bluesky.devices.fly import make_fly_devices  # noqa: E402
from espt_bluesky.devices.fly.epics import make_epics_fly_devices  # noqa: E402
from espt_bluesky.plans.fly import fly_hops, fly_image  # noqa: E402
from espt_bluesky.storage import read_map  # noqa: E402

SEED = 5
IMAGE = dict(x_range=(30.0, 70.0, 21), y_range=(45.0, 55.0, 3), speed=20.0, sample_rate=200.0, height=5.0,
             plane=0.0)
out = {}
RE = RunEngine({}, call_returns_result=True)


def run(plan):
    docs = []
    res = RE(plan, lambda n, d: docs.append((n, d)))
    return res, docs


def local_and_epics(prefix: str, technique: str, plan, **kwargs):
    """The same fly plan on the in-process bench and over a bench IOC at ``prefix`` (same seed, noise off):
    (exit statuses, local map, EPICS map, the EPICS detector, the EPICS run's documents)."""
    ioc = IOCProcess("bench", prefix, PORTS[0], ENV, technique=technique, sample="patterned", seed=SEED,
                     options={"noise": 0.0}, log_path=str(work / f"ioc_{prefix.strip(':')}.log")).start()
    try:
        local = make_sim_bench(technique, "patterned", seed=SEED, noise=0.0)
        fs, fd = make_fly_devices(local, work / "local")
        res, docs = run(plan(fs, fd, local.stage, local.potentiostat, **kwargs))
        eb = make_epics_bench(prefix)
        es, ed = make_epics_fly_devices(f"{prefix}fly:", work / "epics")
        res2, docs2 = run(plan(es, ed, eb.stage, eb.potentiostat, **kwargs))
        return [res.exit_status, res2.exit_status], read_map(docs), read_map(docs2), ed, docs2
    finally:
        ioc.stop()


exits, ref, got, ed, docs2 = local_and_epics("F1:", "SECM", fly_image, **IMAGE)
out["image"] = dict(
    exit=exits,
    shape=list(got.fly_current_forward.shape),
    max_rel_diff=max(float(np.nanmax(np.abs(got[v].values - ref[v].values)) / np.nanmax(np.abs(ref[v].values)))
                     for v in ("fly_current_forward", "fly_current_backward")),
    n_samples=int(got.n_forward.sum() + got.n_backward.sum()),
    file=str(ed.file_path), keys=sorted(k for k in [d for n, d in docs2 if n == "descriptor"][0]["data_keys"]))

HOPS = dict(x_range=(30.0, 70.0, 21), y_range=(50.0, 50.0, 1), hop_height=1.0, drop=0.01)
exits, ref, got, _, _ = local_and_epics("F2:", "SICM", fly_hops, **HOPS)
out["hops"] = dict(exit=exits,
                   max_abs_diff_um=float(np.nanmax(np.abs(got.fly_surface_z.values - ref.fly_surface_z.values))),
                   n=int(np.isfinite(got.fly_surface_z.values).sum()))


#: A flight of several controller steps (24 passes of 10 000 samples, 7 passes per step of STEP_SAMPLES = 65 536),
#: 24 s of bench time paced at 1/8: 3 s
LONG_IMAGE = dict(x_range=(30.0, 50.0, 11), y_range=(45.0, 55.0, 12), speed=20.0, sample_rate=10_000.0,
                  height=5.0, plane=0.0)


def write_fails_after_the_first(prefix: str):
    """fly_image over a paced bench IOC with the detector's HDF5 writes failing (disk full) on every write after
    the first one, whatever passes it holds (the first write is the first batch the acquire loop copies; each
    dataset's append gets the file row it starts at); then a normal fly_image over the same IOC.  The flight is
    several controller steps long, so whether the failed run aborted the controller (``NDone`` < ``NTotal``) or
    let it fly on to the end shows in the pass count."""
    import re

    import h5py
    from bluesky import plan_stubs as bps

    from espt_bluesky.devices.fly import devices as fdev

    ioc = IOCProcess("bench", prefix, PORTS[0], ENV, technique="SECM", sample="patterned", seed=SEED,
                     options={"noise": 0.0}, time_scale=0.125, log_path=str(work / f"ioc_{prefix.strip(':')}.log"))
    ioc.start()
    append = fdev.FlyDataset.append
    calls = {"ok": 0, "failed": 0}

    def failing_append(self, ds, data, i, j, n0):
        if n0 > 0:  # every write after the first one (the file already holds rows)
            calls["failed"] += 1
            raise OSError(28, "No space left on device")
        calls["ok"] += 1
        return append(self, ds, data, i, j, n0)

    res = {}
    try:
        eb = make_epics_bench(prefix)
        es, ed = make_epics_fly_devices(f"{prefix}fly:", work / "epics_fail")
        docs = []
        fdev.FlyDataset.append = failing_append
        try:
            RE(fly_image(es, ed, eb.stage, eb.potentiostat, **LONG_IMAGE), lambda n, d: docs.append((n, d)))
            res["error_type"], res["error"] = None, None
        except Exception as exc:
            res["error_type"], res["error"] = type(exc).__name__, str(exc)
            res["error_is_fly_write_error"] = isinstance(exc, fdev.FlyWriteError)
        finally:
            fdev.FlyDataset.append = append
        res["appends"] = calls
        stop = [d for n, d in docs if n == "stop"]
        res["stop"] = dict(exit_status=stop[0]["exit_status"], reason=stop[0].get("reason")) if stop else None
        res["file"] = str(ed.file_path)
        with h5py.File(ed.file_path, "r") as f:
            res["lengths"] = {k: int(f[k].shape[0]) for k in f}
            failed_current = np.asarray(f["current"][()])
        m = re.search(r"the (\d+) passes written before", res["error"] or "")
        res["kept_in_message"] = int(m.group(1)) if m else None
        res["busy_after"] = int(RE(bps.rd(es.busy)).plan_result)
        # how far the controller flew: the passes it completed (NDone) of the programme's (NTotal)
        res["n_done_after"] = int(RE(bps.rd(es.n_done)).plan_result)
        res["n_total"] = int(RE(bps.rd(es.n_total)).plan_result)
        # the same IOC flies again, with the detector's writes working
        docs2 = []
        ok = RE(fly_image(es, ed, eb.stage, eb.potentiostat, **LONG_IMAGE), lambda n, d: docs2.append((n, d)))
        good = read_map(docs2)
        res["next"] = dict(exit=ok.exit_status, n_samples=int(good.n_forward.sum() + good.n_backward.sum()),
                           busy_after=int(RE(bps.rd(es.busy)).plan_result),
                           n_done_after=int(RE(bps.rd(es.n_done)).plan_result),
                           n_total=int(RE(bps.rd(es.n_total)).plan_result))
        with h5py.File(ed.file_path, "r") as f:
            res["next"]["lengths"] = {k: int(f[k].shape[0]) for k in f}
            good_current = np.asarray(f["current"][()])
        k = len(failed_current)
        res["kept_equal_next_run"] = bool(k > 0 and np.array_equal(failed_current, good_current[:k]))
    finally:
        ioc.stop()
    return res


out["write_failure"] = write_fails_after_the_first("F3:")


def stopped_by_the_user(prefix: str):
    """fly_image over a paced bench IOC stopped by the user mid-flight, as Ctrl-C does: on the run's first
    ``stream_datum`` (the first passes are in the file) a thread asks the RunEngine to pause at once, and the paused
    RunEngine is then aborted (``RE.abort``); the next flight over the same IOC is stopped with ``RE.stop()`` from
    such a thread, without a pause; then a normal fly_image.  Each stopped run's stop document, the controller's
    ``Busy``/``NDone``/``NTotal`` and the lengths of the file's datasets are recorded."""
    import faulthandler
    import threading
    import time

    import h5py
    from bluesky import plan_stubs as bps
    from bluesky.utils import RunEngineInterrupted

    ioc = IOCProcess("bench", prefix, PORTS[0], ENV, technique="SECM", sample="patterned", seed=SEED,
                     options={"noise": 0.0}, time_scale=0.125, log_path=str(work / f"ioc_{prefix.strip(':')}.log"))
    ioc.start()
    faulthandler.dump_traceback_later(240, exit=True)  # a hang prints every thread's stack and ends the child
    res = {}
    try:
        eb = make_epics_bench(prefix)
        es, ed = make_epics_fly_devices(f"{prefix}fly:", work / "epics_stop")

        def pv(sig):
            return int(RE(bps.rd(sig)).plan_result)

        for mode in ("abort", "stop"):
            docs, seen, log = [], threading.Event(), []

            def interrupt(mode=mode, log=log):
                try:
                    if mode == "abort":
                        RE.request_pause(defer=False)
                        log.append("pause requested")
                    else:
                        deadline = time.monotonic() + 30
                        while RE.state != "running" and time.monotonic() < deadline:
                            time.sleep(0.005)
                        RE.stop()
                        log.append("stop requested")
                except Exception as exc:  # recorded: the test shows it
                    log.append(f"{type(exc).__name__}: {exc}")

            worker = threading.Thread(target=interrupt, daemon=True)

            def cb(name, doc, docs=docs, seen=seen, worker=worker):
                docs.append((name, doc))
                if name == "stream_datum" and not seen.is_set():
                    seen.set()
                    worker.start()

            r = dict(interrupted=False, error=None)
            try:
                result = RE(fly_image(es, ed, eb.stage, eb.potentiostat, **LONG_IMAGE), cb)
                r["result_exit"] = result.exit_status
            except RunEngineInterrupted:  # paused (or aborted: a plan without a checkpoint cannot pause)
                r["interrupted"], r["state_interrupted"] = True, RE.state
                if RE.state == "paused":  # what a user does next at the prompt
                    RE.abort("test: user stop")
            except Exception as exc:
                r["error"] = f"{type(exc).__name__}: {exc}"
            worker.join(timeout=30)
            r["log"], r["saw_stream_datum"], r["re_state"] = log, seen.is_set(), RE.state
            stop = [d for n, d in docs if n == "stop"]
            r["stop"] = dict(exit_status=stop[0]["exit_status"], reason=stop[0].get("reason")) if stop else None
            key_of = {d["uid"]: d["data_key"] for n, d in docs if n == "stream_resource"}
            registered = {}
            for n, d in docs:
                if n == "stream_datum":
                    k = key_of[d["stream_resource"]]
                    registered[k] = registered.get(k, 0) + d["indices"]["stop"] - d["indices"]["start"]
            r["registered"] = registered  # passes per data key the run's documents point at
            with h5py.File(ed.file_path, "r") as f:
                r["lengths"] = {k: int(f[k].shape[0]) for k in f}
            r["busy_after"], r["n_done_after"], r["n_total"] = pv(es.busy), pv(es.n_done), pv(es.n_total)
            res[mode] = r
        docs2 = []
        ok = RE(fly_image(es, ed, eb.stage, eb.potentiostat, **LONG_IMAGE), lambda n, d: docs2.append((n, d)))
        with h5py.File(ed.file_path, "r") as f:
            lengths = {k: int(f[k].shape[0]) for k in f}
        res["next"] = dict(exit=ok.exit_status, busy_after=pv(es.busy), n_done_after=pv(es.n_done),
                           n_total=pv(es.n_total), lengths=lengths)
    finally:
        faulthandler.cancel_dump_traceback_later()
        ioc.stop()
    return res


out["user_stop"] = stopped_by_the_user("F4:")
print("RESULT " + json.dumps(out))
