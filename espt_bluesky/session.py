"""A session: RunEngine, devices and the Tiled writer, built from a configuration.

The configuration is a dict, a TOML/YAML/JSON file, or environment variables (lowest to highest precedence:
defaults, file, environment, explicit dict)::

    [bench]                 # the simulated bench (default); ESPT_BENCH="SECCM" or "SECCM:hopg:3"
    technique = "SECCM"
    sample = "patterned"
    seed = 0
    time_scale = 0.0
    options = {}            # BenchOptions fields (noise, drift, tilt ...)

    [epics]                 # EPICS hardware (later): prefix = "ESPT:"

    [storage]
    data_dir = "..."        # ESPT_DATA_DIR; default the per-user data directory
    tiled_uri = "..."       # ESPT_TILED_URI; a running server (else: espt serve's server, else in-process)
    api_key = "..."         # ESPT_TILED_API_KEY
    mode = "auto"           # auto | connect | in_process | none
    batch_size = 25         # rows per write (a reader sees the run while it runs)
    waveform_assets = true  # CVs as HDF5 external assets in the data directory's asset dir

``ESPT_CONFIG`` names the file.  Example::

    >>> from espt_bluesky.session import build_session
    >>> s = build_session({"bench": {"technique": "SECCM"}, "storage": {"data_dir": "/tmp/espt"}})
    >>> s.RE(bp.count([s.pstat]))
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import InvalidArgument, check_choice

ENV_CONFIG = "ESPT_CONFIG"
ENV_BENCH = "ESPT_BENCH"

DEFAULTS: dict[str, Any] = {
    "bench": {"technique": "SECCM", "sample": "patterned", "seed": 0, "time_scale": 0.0, "options": {}},
    "epics": None,
    "storage": {"data_dir": None, "tiled_uri": None, "api_key": None, "mode": "auto", "batch_size": 25,
                "waveform_assets": True},
}
STORAGE_MODES = ("auto", "connect", "in_process", "none")


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a TOML (``.toml``), YAML (``.yml``/``.yaml``) or JSON file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"config file {str(path)!r} does not exist")
    text = p.read_text()
    if p.suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    if p.suffix in (".yml", ".yaml"):
        import yaml

        return yaml.safe_load(text) or {}
    if p.suffix == ".json":
        return json.loads(text)
    raise InvalidArgument(f"config file {str(path)!r}: use .toml, .yml/.yaml or .json")


def _env_config() -> dict:
    cfg: dict[str, Any] = {}
    bench = os.environ.get(ENV_BENCH)
    if bench:
        parts = bench.split(":")
        b: dict[str, Any] = {"technique": parts[0]}
        if len(parts) > 1 and parts[1]:
            b["sample"] = parts[1]
        if len(parts) > 2 and parts[2]:
            b["seed"] = int(parts[2])
        cfg["bench"] = b
    st = {}
    for env, key in (("ESPT_DATA_DIR", "data_dir"), ("ESPT_TILED_URI", "tiled_uri"),
                     ("ESPT_TILED_API_KEY", "api_key"), ("ESPT_STORAGE_MODE", "mode")):
        if os.environ.get(env):
            st[key] = os.environ[env]
    if st:
        cfg["storage"] = st
    return cfg


def load_config(config: Mapping | str | os.PathLike | None = None) -> dict:
    """The full configuration: defaults < ``$ESPT_CONFIG`` file < environment < ``config``.

    Parameters
    ----------
    config : dict or path, optional
        A dict (highest precedence) or the path of a config file (replacing ``$ESPT_CONFIG``).
    """
    cfg = copy.deepcopy(DEFAULTS)
    path = config if isinstance(config, (str, os.PathLike)) else os.environ.get(ENV_CONFIG)
    if path:
        cfg = _merge(cfg, read_config_file(path))
    cfg = _merge(cfg, _env_config())
    if isinstance(config, Mapping):
        cfg = _merge(cfg, config)
    cfg["storage"]["mode"] = check_choice("storage.mode", cfg["storage"]["mode"], STORAGE_MODES)
    return cfg


@dataclass
class Session:
    """What a profile or a script needs: a RunEngine, devices, and where the data go.

    Attributes
    ----------
    RE : bluesky.RunEngine
    config : dict
    catalog : LocalCatalog or None
        The Tiled server (None with ``storage.mode = "none"``).
    writer : TiledWriter or None
        Subscribed to ``RE``.
    bench : SimBench or None
        After :meth:`make_bench`.
    devices : dict
        Name -> device, after :meth:`make_bench`.
    """

    RE: Any
    config: dict
    catalog: Any = None
    writer: Any = None
    writer_token: int | None = None
    bench: Any = None
    devices: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping | str | os.PathLike | None = None) -> "Session":
        """Build the RunEngine and the storage, and subscribe the writer (no devices yet)."""
        from bluesky import RunEngine

        cfg = load_config(config)
        RE = RunEngine({})
        self = cls(RE=RE, config=cfg)
        self.catalog = _open_storage(cfg["storage"])
        if self.catalog is not None:
            from .storage.writer import make_writer

            self.writer = make_writer(self.catalog, batch_size=int(cfg["storage"]["batch_size"]))
            self.writer_token = RE.subscribe(self.writer)
        return self

    def make_bench(self):
        """Create the devices named by the configuration (the simulated bench unless ``epics`` is set)."""
        if self.config.get("epics"):
            raise NotImplementedError("EPICS devices are not wired into sessions yet; remove [epics] to use the "
                                      "simulated bench")
        from .devices import make_sim_bench

        b = dict(self.config["bench"])
        options = dict(b.pop("options", None) or {})
        self.bench = make_sim_bench(b.pop("technique"), b.pop("sample"), int(b.pop("seed")),
                                    float(b.pop("time_scale")), **b, **options)
        if self.catalog is not None and self.catalog.asset_dir is not None and \
                self.config["storage"].get("waveform_assets", True):
            from .devices.waveform_assets import HDF5WaveformWriter

            self.bench.potentiostat.asset_writer = HDF5WaveformWriter(self.catalog.asset_dir)
        self.devices = {"stage": self.bench.stage, "pstat": self.bench.potentiostat, "probe": self.bench.probe}
        if self.bench.afm is not None:
            self.devices["afm"] = self.bench.afm
        return self.bench

    # ------------------------------------------------------------------ use
    @property
    def client(self):
        """A Tiled client of the catalog (None without storage)."""
        return self.catalog.client() if self.catalog is not None else None

    def __getattr__(self, name: str) -> Any:
        devices = self.__dict__.get("devices") or {}
        if name in devices:
            return devices[name]
        raise AttributeError(name)

    def namespace(self) -> dict[str, Any]:
        """Names for an IPython or queue-server namespace."""
        ns = {"RE": self.RE, "session": self, "catalog": self.catalog, "bench": self.bench}
        ns.update(self.devices)
        return ns

    def close(self) -> None:
        """Unsubscribe the writer and stop an in-process server this session started."""
        if self.writer_token is not None:
            self.RE.unsubscribe(self.writer_token)
            self.writer_token = None
        if hasattr(self.writer, "close"):  # send what is queued before the server goes (journals keep the rest)
            self.writer.close(timeout=30.0)
        if self.catalog is not None and self.catalog._cm is not None:
            self.catalog.stop()


def _open_storage(st: Mapping[str, Any]):
    from .storage.server import DataDir, LocalCatalog, _resolve_dir, server_alive

    mode = st["mode"]
    if mode == "none":
        return None
    if mode == "connect" or (mode == "auto" and st.get("tiled_uri")):
        return LocalCatalog.connect(st.get("tiled_uri"), st.get("api_key"), st.get("data_dir"))
    dd: DataDir = _resolve_dir(st.get("data_dir"))
    if mode == "auto" and dd.state.exists():
        uri = json.loads(dd.state.read_text()).get("uri", "")
        if uri and server_alive(uri):
            return LocalCatalog.connect(uri, st.get("api_key"), dd.root)
    if st.get("api_key"):
        os.environ.setdefault("ESPT_TILED_API_KEY", st["api_key"])
    return LocalCatalog.in_process(dd.root)


def build_session(config: Mapping | str | os.PathLike | None = None) -> Session:
    """RunEngine, storage with the writer subscribed, and the devices: :meth:`Session.from_config` then
    :meth:`Session.make_bench`."""
    s = Session.from_config(config)
    s.make_bench()
    return s
