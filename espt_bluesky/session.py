"""A session: RunEngine, devices and the Tiled writer, built from a configuration.

The configuration is a dict, a TOML/YAML/JSON file, or environment variables (lowest to highest precedence:
defaults, file, environment, explicit dict)::

    [bench]                 # the simulated bench (default); ESPT_BENCH="SECCM" or "SECCM:hopg:3"
    technique = "SECCM"
    sample = "patterned"
    seed = 0
    time_scale = 0.0
    start = [50.0, 50.0]    # optional: lateral start position (µm)
    options = {}            # BenchOptions fields (noise, drift, tilt ...)

    [epics]                 # EPICS hardware instead of the bench (ESPT_EPICS_PREFIX="ESPT:"); see make_epics_bench
    prefix = "ESPT:"        # stage {prefix}stage:, potentiostat {prefix}pstat:
    stage_prefix = "..."    # optional: another stage IOC (e.g. the beamline's motors)
    pstat_prefix = "..."    # optional: another potentiostat IOC
    technique = "SECM"      # optional: default from the potentiostat's Info PV
    crash_pvs = true        # the stage IOC serves CrashCount/CrashMessage
    connection_timeout = 5.0
    trigger_timeout = 10.0
    ca_addr_list = "10.0.0.5 10.0.0.6:5066"   # EPICS_CA_ADDR_LIST (else the environment's)
    ca_auto_addr_list = false                 # EPICS_CA_AUTO_ADDR_LIST
    ca_repeater_port = 5065                   # EPICS_CA_REPEATER_PORT

    [bus]                   # publish documents to NATS JetStream (docs/bus.md); ESPT_BUS_MODE, ESPT_NATS_SERVERS
    mode = "off"            # off: Tiled writer in-process | bus: publish only (`espt worker tiled` writes) | both
    servers = "nats://127.0.0.1:4222"
    stream = "ESPT"         # JetStream stream (created if missing, with the limits below)
    subject = "espt.docs.default"       # documents go to <subject>.<document name>
    live_subject = "espt.live.default"  # `espt worker livemap` publishes here
    creds = "..."           # NATS credentials file
    publish_timeout = 2.0   # the longest the RunEngine waits for the bus; then the run goes to the local backup
    max_pending = 1000      # unacknowledged publishes before the RunEngine waits
    max_age_days = 30.0     # stream retention (age, bytes)
    max_bytes = -1          # -1: up to the server's JetStream storage (set a limit at a facility)
    journal = "on_failure"  # on_failure: a run is journaled only if the bus fails it | always: every document first

    [session]
    md_dir = "..."          # RE.md persisted here (scan_id survives restarts); default DATA_DIR/runengine_md;
                            # "" keeps RE.md in memory
    suspenders = true       # pause runs while the potentiostat is offline or overloaded

    [storage]
    data_dir = "..."        # ESPT_DATA_DIR; default the per-user data directory
    tiled_uri = "..."       # ESPT_TILED_URI; a running server (else: espt serve's server, else in-process)
    api_key = "..."         # ESPT_TILED_API_KEY
    mode = "auto"           # auto | connect | in_process | none
    batch_size = 25         # rows per write (a reader sees the run while it runs)
    waveform_assets = true  # CVs as HDF5 external assets in the data directory's asset dir
    max_wait = 10.0         # s the RunEngine may wait on a Tiled server that makes no progress

``ESPT_CONFIG`` names the file.  :func:`load_config` checks everything before any server starts or device is built
(:func:`check_config`): an unknown section or key, a bad value, or a malformed file (named, with the parser's line)
raises :class:`~espt_bluesky.errors.InvalidArgument`.  A session's RunEngine returns plan results
(``call_returns_result=True``), keeps ``RE.md`` on disk, records a ``baseline`` stream (stage positions, potentials,
current ranges, cell state, probe) in every run, and has suspenders on the potentiostat's ``online``/``overload``
flags.  Example::

    >>> from espt_bluesky.session import build_session
    >>> s = build_session({"bench": {"technique": "SECCM"}, "storage": {"data_dir": "/tmp/espt"}})
    >>> s.RE(bp.count([s.pstat]))
    >>> s.close()
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import InvalidArgument, check_bool, check_choice, check_int, check_keys, check_range
from .workers.bus import BUS_DEFAULTS

ENV_CONFIG = "ESPT_CONFIG"
ENV_BENCH = "ESPT_BENCH"
ENV_EPICS_PREFIX = "ESPT_EPICS_PREFIX"
EPICS_KEYS = ("prefix", "stage_prefix", "pstat_prefix", "technique", "crash_pvs", "connection_timeout",
              "trigger_timeout")
CA_KEYS = {"ca_addr_list": "EPICS_CA_ADDR_LIST", "ca_auto_addr_list": "EPICS_CA_AUTO_ADDR_LIST",
           "ca_repeater_port": "EPICS_CA_REPEATER_PORT", "ca_server_port": "EPICS_CA_SERVER_PORT",
           "ca_max_array_bytes": "EPICS_CA_MAX_ARRAY_BYTES"}

DEFAULTS: dict[str, Any] = {
    "bench": {"technique": "SECCM", "sample": "patterned", "seed": 0, "time_scale": 0.0, "options": {}},
    "epics": None,
    "storage": {"data_dir": None, "tiled_uri": None, "api_key": None, "mode": "auto", "batch_size": 25,
                "waveform_assets": True, "max_wait": 10.0},
    "session": {"md_dir": None, "suspenders": True},
    "bus": dict(BUS_DEFAULTS),
}
STORAGE_MODES = ("auto", "connect", "in_process", "none")
#: keys a section may have beyond those in DEFAULTS
EXTRA_KEYS = {"bench": ("start",)}


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
    if p.suffix not in (".toml", ".yml", ".yaml", ".json"):
        raise InvalidArgument(f"config file {str(path)!r}: use .toml, .yml/.yaml or .json")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            import tomllib

            cfg = tomllib.loads(text)
        elif p.suffix == ".json":
            cfg = json.loads(text)
        else:
            import yaml

            cfg = yaml.safe_load(text) or {}
    except Exception as exc:  # the parsers' own errors (TOMLDecodeError, JSONDecodeError, YAMLError) give the line
        raise InvalidArgument(f"config file {str(path)!r} is not valid {p.suffix[1:].upper()}: {exc}") from None
    if not isinstance(cfg, Mapping):
        raise InvalidArgument(f"config file {str(path)!r} must hold a table of sections ([bench], [storage] ...), "
                              f"not a {type(cfg).__name__}")
    return cfg


def _env_config() -> dict:
    cfg: dict[str, Any] = {}
    bench = os.environ.get(ENV_BENCH)
    if bench:
        parts = bench.split(":")
        from .physics.bench_model import TECHNIQUES
        from .physics.sample import PRESETS

        if len(parts) > 3:
            raise InvalidArgument(f"{ENV_BENCH}={bench!r} must be TECHNIQUE[:SAMPLE[:SEED]]")
        b: dict[str, Any] = {"technique": check_choice(f"{ENV_BENCH} technique", parts[0], TECHNIQUES)}
        if len(parts) > 1 and parts[1]:
            b["sample"] = check_choice(f"{ENV_BENCH} sample", parts[1], PRESETS)
        if len(parts) > 2 and parts[2]:
            if not parts[2].isdigit():
                raise InvalidArgument(f"{ENV_BENCH}={bench!r}: the seed {parts[2]!r} is not a non-negative integer")
            b["seed"] = int(parts[2])
        cfg["bench"] = b
    if os.environ.get(ENV_EPICS_PREFIX):
        cfg["epics"] = {"prefix": os.environ[ENV_EPICS_PREFIX]}
    st = {}
    for env, key in (("ESPT_DATA_DIR", "data_dir"), ("ESPT_TILED_URI", "tiled_uri"),
                     ("ESPT_TILED_API_KEY", "api_key"), ("ESPT_STORAGE_MODE", "mode")):
        if os.environ.get(env):
            st[key] = os.environ[env]
    if "mode" in st:
        st["mode"] = check_choice("ESPT_STORAGE_MODE", st["mode"], STORAGE_MODES)
    if st:
        cfg["storage"] = st
    bus = {}
    if os.environ.get("ESPT_BUS_MODE"):
        bus["mode"] = os.environ["ESPT_BUS_MODE"]
    if os.environ.get("ESPT_NATS_SERVERS"):
        bus["servers"] = os.environ["ESPT_NATS_SERVERS"].split(",")
    if bus:
        cfg["bus"] = bus
    return cfg


def load_config(config: Mapping | str | os.PathLike | None = None) -> dict:
    """The full configuration: defaults < ``$ESPT_CONFIG`` file < environment < ``config``.

    Parameters
    ----------
    config : dict or path, optional
        A dict (highest precedence) or the path of a config file (replacing ``$ESPT_CONFIG``).
    """
    if config is not None and not isinstance(config, (Mapping, str, os.PathLike)):
        raise InvalidArgument(f"config={config!r} must be a dict, the path of a config file, or None")
    cfg = copy.deepcopy(DEFAULTS)
    from_env = not isinstance(config, (str, os.PathLike))
    path = os.environ.get(ENV_CONFIG) if from_env else config
    if path:
        try:
            cfg = _merge(cfg, check_config(read_config_file(path), partial=True))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{exc} (from ${ENV_CONFIG})" if from_env else str(exc)) from None
    cfg = _merge(cfg, _env_config())
    if isinstance(config, Mapping):
        cfg = _merge(cfg, check_config(config, partial=True))
    return check_config(cfg)


def check_config(cfg: Mapping, *, partial: bool = False) -> dict:
    """Validate a configuration: known sections and keys, and values the session can use.

    ``partial`` checks only the sections and keys (a file or dict to be merged over the defaults); otherwise every
    value is checked too (the bench through :func:`espt_bluesky.devices.sim_bench.check_bench_arguments`).
    """
    cfg = check_keys("config", cfg, optional=DEFAULTS)
    for section, defaults in DEFAULTS.items():
        if isinstance(defaults, dict) and section in cfg:
            check_keys(section, cfg[section], optional=[*defaults, *EXTRA_KEYS.get(section, ())])
    if cfg.get("epics") is not None and not isinstance(cfg["epics"], Mapping):
        raise InvalidArgument(f"epics={cfg['epics']!r} must be a table of EPICS settings or absent")
    if partial:
        return cfg
    st = cfg["storage"]
    st["mode"] = check_choice("storage.mode", st["mode"], STORAGE_MODES)
    st["batch_size"] = check_int("storage.batch_size", st["batch_size"], 1, 100_000)
    st["waveform_assets"] = check_bool("storage.waveform_assets", st["waveform_assets"])
    st["max_wait"] = float(check_range("storage.max_wait", st["max_wait"], 0.0, 3600.0, units="s"))
    for k in ("data_dir", "tiled_uri", "api_key"):
        if st[k] is not None and not isinstance(st[k], (str, os.PathLike)):
            raise InvalidArgument(f"storage.{k}={st[k]!r} must be a string (or absent)")
    from .workers.bus import BusConfig

    checked = BusConfig.from_mapping(cfg["bus"])
    cfg["bus"] = {k: getattr(checked, k) for k in BUS_DEFAULTS}
    se = cfg["session"]
    se["suspenders"] = check_bool("session.suspenders", se["suspenders"])
    if se["md_dir"] is not None and not isinstance(se["md_dir"], (str, os.PathLike)):
        raise InvalidArgument(f"session.md_dir={se['md_dir']!r} must be a path (\"\" keeps RE.md in memory) or absent")
    if not cfg.get("epics"):
        from .devices.sim_bench import check_bench_arguments

        b = cfg["bench"]
        try:
            check_bench_arguments(b["technique"], b["sample"], b["seed"], b["time_scale"],
                                  b.get("start", (50.0, 50.0)), b["options"] or {})
        except InvalidArgument as exc:
            raise InvalidArgument(f"[bench] {exc}") from None
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
    #: the bus publisher (``[bus] mode = "bus"`` or ``"both"``), subscribed to ``RE``
    publisher: Any = None
    publisher_token: int | None = None
    bench: Any = None
    devices: dict[str, Any] = field(default_factory=dict)
    #: the baseline preprocessor (``sd.baseline`` lists what is read at the start and end of every run)
    sd: Any = None
    suspenders: list = field(default_factory=list)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping | str | os.PathLike | None = None) -> "Session":
        """Build the RunEngine and the storage, and subscribe the writer (no devices yet)."""
        from bluesky import RunEngine

        cfg = load_config(config)
        RE = RunEngine({}, call_returns_result=True)
        self = cls(RE=RE, config=cfg)
        self.catalog = _open_storage(cfg["storage"])
        md_dir = self.md_dir
        if md_dir is not None:
            from bluesky.utils import PersistentDict

            md_dir.mkdir(parents=True, exist_ok=True)
            RE.md = PersistentDict(str(md_dir))
        bus_mode = cfg["bus"]["mode"]
        if self.catalog is not None and bus_mode in ("off", "both"):
            from .storage.writer import make_writer

            self.writer = make_writer(self.catalog, batch_size=int(cfg["storage"]["batch_size"]),
                                      max_wait=float(cfg["storage"]["max_wait"]))
            self.writer_token = RE.subscribe(self.writer)
        if bus_mode in ("bus", "both"):
            from .workers.publisher import BusPublisher

            bus = cfg["bus"]
            backup = bus.get("backup_dir") or (self.catalog.backup_dir if self.catalog is not None else None) \
                or self.data_dir / "backup"
            self.publisher = BusPublisher(bus, backup)
            self.publisher_token = RE.subscribe(self.publisher)
        return self

    def make_bench(self):
        """Create the devices named by the configuration (the simulated bench unless ``epics`` is set)."""
        if self.config.get("epics"):  # waveforms stay event arrays: the EPICS potentiostat writes no assets yet
            self.bench = _make_epics_bench(self.config["epics"])
            self._add_bench_devices()
            return self.bench
        from .devices import make_sim_bench

        b = dict(self.config["bench"])
        options = dict(b.pop("options", None) or {})
        self.bench = make_sim_bench(b.pop("technique"), b.pop("sample"), int(b.pop("seed")),
                                    float(b.pop("time_scale")), **b, **options)
        if self.catalog is not None and self.catalog.asset_dir is not None and \
                self.config["storage"].get("waveform_assets", True):
            from .devices.waveform_assets import HDF5WaveformWriter

            self.bench.potentiostat.asset_writer = HDF5WaveformWriter(self.catalog.asset_dir)
        self._add_bench_devices()
        return self.bench

    def _add_bench_devices(self) -> None:
        """Name the bench's devices, record the baseline and install the suspenders."""
        from bluesky.preprocessors import SupplementalData

        b = self.bench
        self.devices = {"stage": b.stage, "pstat": b.potentiostat, "probe": b.probe}
        for name in ("hopper", "afm"):
            if getattr(b, name, None) is not None:
                self.devices[name] = getattr(b, name)
        fly_dir = self.catalog.asset_dir if self.catalog is not None else None
        if fly_dir is not None and getattr(b, "model", None) is not None and \
                b.technique in ("SECM", "SICM", "EC-AFM"):  # ophyd-async fly devices over the bench
            from .devices.fly import make_fly_devices

            self.devices["fly_stage"], self.devices["fly_det"] = make_fly_devices(b, fly_dir, name="fly")
        if self.sd is not None and self.sd in self.RE.preprocessors:
            self.RE.preprocessors.remove(self.sd)
        self.sd = SupplementalData(baseline=baseline_of(b))
        self.RE.preprocessors.append(self.sd)
        for sus in self.suspenders:
            self.RE.remove_suspender(sus)
        self.suspenders = []
        if self.config["session"].get("suspenders", True):
            from .suspenders import install_suspenders, potentiostat_suspenders

            self.suspenders = install_suspenders(self.RE, potentiostat_suspenders(b.potentiostat))

    # ------------------------------------------------------------------ use
    @property
    def data_dir(self) -> Path:
        """The data directory (catalog, assets, backup, RE.md)."""
        if self.catalog is not None and self.catalog.data_dir is not None:
            return self.catalog.data_dir.root
        from .storage.server import default_data_dir

        d = self.config["storage"].get("data_dir")
        return Path(d).expanduser().resolve() if d else default_data_dir()

    @property
    def md_dir(self) -> Path | None:
        """Where ``RE.md`` is kept (None: in memory)."""
        d = self.config["session"].get("md_dir")
        if d == "":
            return None
        return Path(d).expanduser().resolve() if d else self.data_dir / "runengine_md"

    def instrument(self) -> str:
        """One line naming the instrument: the simulated bench's technique and sample, or the EPICS prefix."""
        b = self.bench
        if b is None:
            return "no devices yet (Session.make_bench())"
        if self.config.get("epics"):
            return (f"EPICS {b.technique} instrument: stage {b.stage.prefix!r}, potentiostat "
                    f"{b.potentiostat.prefix!r} ({os.environ.get('EPICS_CA_ADDR_LIST') or 'CA auto address list'})")
        m = b.model
        return (f"simulated {b.technique} bench, sample {m.sample.name!r} (seed {self.config['bench']['seed']}, "
                f"time_scale {b.time_scale:g})")

    def banner(self) -> str:
        """A short description of the session: instrument, catalog, data directory, RE.md."""
        from . import __version__

        if self.catalog is None:
            where = "none (storage.mode = 'none'): runs are not saved"
        else:
            how = "in-process" if self.catalog._cm is not None else "server"
            where = f"{self.catalog.uri} ({how})"
        md = self.md_dir
        lines = [f"espt_bluesky {__version__}",
                 f"  instrument: {self.instrument()}",
                 f"  catalog:    {where}",
                 *([f"  bus:        {self.bus_line()}"] if self.publisher is not None else []),
                 f"  data dir:   {self.data_dir}",
                 f"  RE.md:      {md if md is not None else 'in memory'} (next scan_id "
                 f"{int(self.RE.md.get('scan_id', 0)) + 1})",
                 f"  devices:    {', '.join(self.devices) or '-'}"]
        return "\n".join(lines)

    def bus_line(self) -> str:
        """Where documents are published, and whether the bus answers (for the banner)."""
        p = self.publisher
        h = p.health()
        state = "connected" if h["connected"] else f"UNREACHABLE: runs go to {p.backup_directory}"
        writer = "Tiled written by `espt worker tiled`" if self.writer is None else "and written in-process"
        return f"{', '.join(h['servers'])} stream {h['stream']} subject {h['subject']}.* ({state}; {writer})"

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
        """Unsubscribe the writer, release ``RE.md``'s directory and stop an in-process server this session
        started (idempotent)."""
        md = self.RE.md
        if hasattr(md, "flush"):  # a PersistentDict: write it, then let it go (one owner per directory)
            md.flush()
            self.RE.md = dict(md)
        if self.writer_token is not None:
            self.RE.unsubscribe(self.writer_token)
            self.writer_token = None
        if hasattr(self.writer, "close"):  # send what is queued before the server goes (journals keep the rest)
            self.writer.close(timeout=30.0)
        if self.publisher_token is not None:
            self.RE.unsubscribe(self.publisher_token)
            self.publisher_token = None
        if self.publisher is not None:
            self.publisher.close()
        if self.catalog is not None and self.catalog._cm is not None:
            self.catalog.stop()


def _make_epics_bench(epics: Mapping[str, Any]):
    """The EPICS instrument of an ``[epics]`` section (Channel Access settings applied first)."""
    unknown = set(epics) - set(EPICS_KEYS) - set(CA_KEYS)
    if unknown:
        raise InvalidArgument(f"[epics] has unknown key(s) {sorted(unknown)}; allowed: "
                              f"{sorted(EPICS_KEYS + tuple(CA_KEYS))}")
    if not epics.get("prefix") and not (epics.get("stage_prefix") and epics.get("pstat_prefix")):
        raise InvalidArgument(f"[epics] prefix={epics.get('prefix')!r}: give the IOC prefix (e.g. \"ESPT:\") or "
                              f"both stage_prefix and pstat_prefix")
    env = {}
    for key, var in CA_KEYS.items():
        if epics.get(key) is not None:
            v = epics[key]
            env[var] = ("YES" if v else "NO") if isinstance(v, bool) else str(v)
    if env:
        from .ioc.launch import configure_client_env

        configure_client_env(env)  # before the first PV: libca reads them then
    from .devices.epics import make_epics_bench

    kw = {k: epics[k] for k in EPICS_KEYS if epics.get(k) not in (None, "")}
    return make_epics_bench(kw.pop("prefix", "ESPT:"), **kw)


def baseline_of(bench: Any) -> list:
    """What the baseline stream records at the start and end of every run: the stage, the potentiostat's
    potentials, current ranges, cell state and technique, and the probe geometry."""
    p = bench.potentiostat
    out = [bench.stage, p.tip.potential, p.substrate.potential, p.tip.current_range, p.substrate.current_range,
           p.cell_on, p.technique, p.working_channel]
    if bench.probe is not None:
        out += [getattr(bench.probe, c) for c in bench.probe.component_names]
    return out


def _open_storage(st: Mapping[str, Any]):
    from .storage.server import DataDir, LocalCatalog, _resolve_dir

    mode = st["mode"]
    if mode == "none":
        return None
    if mode == "connect" or (mode == "auto" and st.get("tiled_uri")):
        return LocalCatalog.connect(st.get("tiled_uri"), st.get("api_key"), st.get("data_dir"))
    dd: DataDir = _resolve_dir(st.get("data_dir"))
    if mode == "auto":
        # a server owns this directory (`espt serve` holds its lock; a slow answer under load still counts):
        # attach to it rather than start a second server on the same files
        uri = (dd.running_server() or {}).get("uri", "")
        if uri:
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
