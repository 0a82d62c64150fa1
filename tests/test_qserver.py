"""The queue server: the startup directory's generated files are current, every plan of the namespace is one the
queue server can describe and validate, and start-re-manager runs project plans queued through
bluesky-queueserver-api, whose runs are then read back from Tiled."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest
import yaml

from espt_bluesky import qserver

from test_session_exit import HANG, REPO, session_env

STARTUP = REPO / "profile_collection" / "startup"
REQUIRE = os.environ.get("ESPT_REQUIRE_SERVICES", "") not in ("", "0")
GRID = {"x_range": [40, 60, 3], "y_range": [40, 60, 3]}

#: realistic calls of the project plans and standard plans, as a queue-server client sends them (JSON values,
#: device names as strings)
CALLS = [
    ("approach", ["stage", "pstat"], {"technique": "SECCM"}),
    ("hopping_scan", ["stage", "pstat"], {"technique": "SECCM", "mode": "device", "hopper": "hopper", **GRID,
                                          "measure": {"technique": "CV", "e_start": 0.0, "e_vertex1": -0.3,
                                                      "e_vertex2": 0.3, "scan_rate": 1.0}}),
    ("hopping_scan", ["stage", "pstat"], {"technique": "SECCM", "mode": "plan", "points": [[40, 40], [50, 50]]}),
    ("adaptive_hopping_scan", ["stage", "pstat"], {"technique": "SECCM", "hopper": "hopper", "x_range": [40, 60],
                                                   "y_range": [40, 60], "max_hops": 7, "strategy": "balanced"}),
    ("combinatorial_sweep", ["stage", "pstat"], {"parameters": {"scan_rate": [0.5, 1.0]}, "seed": 3,
                                                 "x_range": [40, 60, 2], "y_range": [40, 60, 2]}),
    ("constant_height_image", ["stage", "pstat"], {**GRID, "height": 5.0, "plane": 0.0}),
    ("measure_tilt", ["stage", "pstat", [[30, 30], [60, 30], [30, 60]]], {"technique": "SECCM"}),
    ("operando_imaging", ["stage", "pstat"], {**GRID, "height": 5.0, "plane": 0.0, "n_images": 2,
                                              "cycle": {"technique": "CV", "e_start": 0.0, "e_vertex1": -0.3,
                                                        "e_vertex2": 0.3, "scan_rate": 0.1}}),
    ("sgtc", ["stage", "pstat"], {"tip_potential": 0.1, "steps": [0.1, 0.2]}),
    ("count", [["pstat"]], {"num": 3}),
    ("scan", [["pstat"], "stage.z", 1.0, 3.0, 3], {}),
    ("rel_scan", [["pstat"], "stage.x", -1.0, 1.0, 3], {}),
    ("grid_scan", [["pstat"], "stage.y", 40, 60, 3, "stage.x", 40, 60, 3], {}),
    ("list_scan", [["pstat"], "stage.x", [40, 45, 50]], {}),
]


@pytest.fixture(scope="module")
def lists():
    return qserver.existing_plans_and_devices(STARTUP)


def _allowed(lists):
    from bluesky_queueserver.manager.profile_ops import load_allowed_plans_and_devices

    perms = yaml.safe_load((STARTUP / "user_group_permissions.yaml").read_text())
    plans, devices = load_allowed_plans_and_devices(existing_plans=lists["existing_plans"],
                                                    existing_devices=lists["existing_devices"],
                                                    user_group_permissions=perms)
    return plans["primary"], devices["primary"]


def test_checked_in_list_of_plans_and_devices_is_current(lists):
    stored = yaml.safe_load((STARTUP / qserver.FILE_NAME).read_text())
    assert stored == lists, "stale: run `espt qserver-lists` and commit profile_collection/startup/" + qserver.FILE_NAME


def test_namespace_has_the_plans_and_named_devices(lists):
    plans, devices = lists["existing_plans"], lists["existing_devices"]
    assert {"approach", "hopping_scan", "combinatorial_sweep", "constant_height_image", "measure_tilt",
            "operando_imaging", "sgtc"} <= set(plans)
    assert {"count", "scan", "rel_scan", "grid_scan", "rel_grid_scan", "list_scan"} <= set(plans)
    assert {"stage", "pstat", "probe", "hopper"} <= set(devices)


def test_every_plan_signature_is_understood(lists):
    """The queue server builds a pydantic model of every plan's parameters; string annotations or undefined
    types fail here ("Model is not fully defined"), and device arguments must convert device names."""
    from bluesky_queueserver.manager.profile_ops import construct_parameters, pydantic_construct_model_class

    for name, desc in lists["existing_plans"].items():
        model = pydantic_construct_model_class(construct_parameters(desc["parameters"]))
        model.model_rebuild(raise_errors=True)
        for p in desc["parameters"]:
            t = p.get("annotation", {}).get("type", "")
            assert not (t.startswith("'") or t.startswith('"')), f"{name}({p['name']}): string annotation {t}"
        if name in CALLS_BY_NAME:
            for p in desc["parameters"]:
                if p["name"] in ("stage", "potentiostat", "hopper", "probe", "afm"):
                    assert p.get("convert_device_names"), f"{name}({p['name']}) does not take a device name"


CALLS_BY_NAME = {c[0] for c in CALLS}


@pytest.mark.parametrize("name,args,kwargs", CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CALLS)])
def test_queue_server_validates_realistic_calls(lists, name, args, kwargs):
    from bluesky_queueserver.manager.profile_ops import validate_plan

    plans, devices = _allowed(lists)
    ok, msg = validate_plan({"name": name, "args": args, "kwargs": kwargs, "user_group": "primary"},
                            allowed_plans=plans, allowed_devices=devices)
    assert ok, msg


def test_validation_catches_string_annotations():
    """The check above can fail: a plan written with string annotations is refused by the queue server."""
    from bluesky_queueserver.manager.profile_ops import _process_plan, validate_plan

    def bad_plan(stage: "Readable", n: "int" = 1):  # noqa: F821  -- what `from __future__ import annotations` makes
        yield from []

    desc = _process_plan(bad_plan, existing_devices={}, existing_plans={})
    ok, msg = validate_plan({"name": "bad_plan", "args": ["stage"], "kwargs": {}, "user_group": "primary"},
                            allowed_plans={"bad_plan": desc}, allowed_devices={"stage": {}})
    assert not ok and "not fully defined" in msg


# ----------------------------------------------------------------------------------- the real queue server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_prefix():
    try:
        import redis

        r = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
        r.ping()
    except Exception as exc:  # noqa: BLE001
        if REQUIRE:
            pytest.fail(f"Redis on 127.0.0.1:6379 does not answer: {exc} (ESPT_REQUIRE_SERVICES=1)")
        pytest.skip(f"Redis on 127.0.0.1:6379 does not answer: {exc}")
    prefix = f"espt_test_{uuid.uuid4().hex[:10]}"
    yield prefix
    for key in r.scan_iter(f"{prefix}*"):
        r.delete(key)
    r.close()


@pytest.mark.slow
@pytest.mark.services
def test_start_re_manager_runs_queued_project_plans(tmp_path, redis_prefix):
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.zmq import REManagerAPI

    from espt_bluesky.storage.server import LocalCatalog

    startup = tmp_path / "startup"  # a copy: the repository's files stay untouched whatever the manager does
    shutil.copytree(STARTUP, startup, ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    cfg = tmp_path / "espt.toml"
    cfg.write_text('[bench]\ntechnique = "SECCM"\n[session]\nmd_dir = "%s"\n' % (tmp_path / "qs_md"))
    control, info = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    env = session_env(data, ESPT_CONFIG=str(cfg))
    log = open(tmp_path / "re_manager.log", "w")
    proc = subprocess.Popen(["start-re-manager", "--startup-dir", str(startup), "--redis-addr", "127.0.0.1:6379",
                             "--redis-name-prefix", redis_prefix, "--zmq-control-addr", control,
                             "--zmq-info-addr", info, "--update-existing-plans-devices", "NEVER"],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    rm = REManagerAPI(zmq_control_addr=control, zmq_info_addr=info, timeout_recv=10.0)
    cat = None
    try:
        # the Tiled server starts while the manager does (two processes, both mostly imports); the profile finds it
        # through server.json only when the worker's environment opens, below
        cat = LocalCatalog.start(data)  # what `espt serve` runs
        deadline = time.monotonic() + 60
        while True:
            try:
                rm.status()
                break
            except Exception:  # noqa: BLE001 -- the manager is still starting
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        rm.environment_open()
        rm.wait_for_idle(timeout=HANG)
        assert rm.status()["worker_environment_exists"], (tmp_path / "re_manager.log").read_text()[-3000:]
        items = [BPlan("approach", "stage", "pstat", technique="SECCM"),
                 BPlan("hopping_scan", "stage", "pstat", technique="SECCM", mode="device", hopper="hopper", **GRID,
                       measure={"technique": "CV", "e_start": 0.0, "e_vertex1": -0.3, "e_vertex2": 0.3,
                                "scan_rate": 1.0}),
                 BPlan("combinatorial_sweep", "stage", "pstat", parameters={"scan_rate": [0.5, 1.0]}, seed=3,
                       x_range=[40, 60, 2], y_range=[40, 60, 2]),
                 BPlan("adaptive_hopping_scan", "stage", "pstat", technique="SECCM", hopper="hopper",
                       x_range=[40, 60], y_range=[40, 60], max_hops=7, strategy="balanced")]
        for item in items:
            rm.item_add(item)  # validated by the manager against existing_plans_and_devices.yaml
        rm.queue_start()
        rm.wait_for_idle(timeout=HANG)
        history = rm.history_get()["items"]
        assert [h["name"] for h in history] == ["approach", "hopping_scan", "combinatorial_sweep",
                                                "adaptive_hopping_scan"]
        results = [h["result"] for h in history]
        assert [r["exit_status"] for r in results] == ["completed"] * 4, results
        uids = [u for r in results for u in r["run_uids"]]
        client = cat.client()
        runs = [client[u] for u in uids]
        assert [r.metadata["start"]["plan_name"] for r in runs] == ["approach", "hopping_scan",
                                                                    "combinatorial_sweep", "adaptive_hopping_scan"]
        assert all(r.metadata["stop"]["exit_status"] == "success" for r in runs)
        hop = runs[1]["primary"].read()
        assert hop["hopper_surface_z"].size == 9 and hop["pstat_wf_current"].shape == (9, 200)
        (source,) = runs[1]["primary"]["pstat_wf_current"].data_sources()  # the CVs as HDF5 waveform assets
        assert source.mimetype == "application/x-hdf5"
        assert sorted(runs[2]["primary"].read()["param_scan_rate"].values) == [0.5, 1.0]  # 2 combinations
        assert "baseline" in runs[0]
        dec = runs[3]["decisions"].read()  # the adaptive run: every decision recorded, 7 valid hops
        assert int(dec["decision_valid"].sum()) == 7 and set(dec["decision_strategy"].values[5:]) == {"balanced"}
        rm.environment_close()
        rm.wait_for_idle(timeout=60)
    finally:
        try:  # `qserver manager stop`: REManagerAPI has no manager_stop(); without this the manager was killed
            rm.send_request(method="manager_stop", params={"option": "safe_off"})  # after waiting 30 s below
        except Exception:  # noqa: BLE001
            pass
        rm.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if cat is not None:
            cat.stop()
