"""The bipotentiostat: tip and substrate channels, a technique with its parameters, and a waveform acquisition.

Reading the device gives the scalar currents of both channels (``pstat_tip_current``,
``pstat_substrate_current``) and, when the technique is not ``"READ"``, the waveform of the run technique:
``pstat_wf_time`` (s), ``pstat_wf_potential`` (V), ``pstat_wf_current`` (A, the driven channel) and
``pstat_wf_collector_current`` (A, the other channel), each with shape ``(n_samples,)`` and dimension
``waveform_index``.  Each trigger runs the technique once; the number of samples is fixed by ``n_samples`` so
that every event of a stream has the same shape whatever the scan rate or duration.

Waveforms can instead be written by the device to files and announced as external assets
(StreamResource/StreamDatum): give the potentiostat an ``asset_writer`` (see :class:`AssetWriter`) and the
waveform keys are described with ``external="STREAM:"``.  This works under any plan that triggers and reads the
device (stock ``bp.count``/``bp.scan`` as well as ours, staged or not, the technique set before or after
staging): every stream that first reads the device opens a segment of assets of its own (at ``describe()``), and
the waveform of each acquisition is written when the RunEngine collects the asset documents right after reading
it.  A waveform that cannot be written as described (the technique or ``n_samples`` changed within a stream) stops
the run with :class:`~espt_bluesky.devices.waveform_assets.WaveformWriteError`.

A technique that drives the cell (CA/CV/LSV/CP) connects it (``cell_on`` = 1) when it is triggered, as a
potentiostat does when it starts a technique; ``OCP`` records at open circuit; ``READ`` with the cell open reads
zero currents.

Techniques (on ``working_channel``; the other channel is held at its ``potential``):

========  ========================================================================================
READ      steady-state currents of both channels at their set potentials (no waveform)
CA        potential step to ``e_hold`` for ``duration``
CV        ``e_start`` → ``e_vertex1`` → ``e_vertex2`` → ``e_start`` at ``scan_rate``, ``n_cycles`` times
LSV       ``e_start`` → ``e_end`` at ``scan_rate``
OCP       open circuit for ``duration``: zero current, the potential recorded
CP        galvanostatic: ``current_setpoint`` for ``duration``
========  ========================================================================================
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ..errors import (EsptError, InvalidArgument, Overload, check_choice, check_int, check_number, check_positive,
                      check_range, check_samples_cap)
from ..physics.bench_model import BenchModel
from .probes import Probe
from .sim_status import complete_status
from .signals import CURRENT_PRECISION, QuantitySignal
from .waveform_assets import WritesWaveformAssets

TECHNIQUES = ("READ", "CA", "CV", "LSV", "OCP", "CP")
WAVEFORM_FIELDS = ("time", "potential", "current", "collector_current")
WAVEFORM_UNITS = {"time": "s", "potential": "V", "current": "A", "collector_current": "A"}
WAVEFORM_DIM = "waveform_index"


class InstrumentOffline(EsptError, ConnectionError):
    """The instrument does not answer (its ``online`` signal is 0)."""


class AssetWriter(Protocol):
    """What the potentiostat needs from a writer of external waveform assets (e.g.
    :class:`~espt_bluesky.devices.waveform_assets.HDF5WaveformWriter`)."""

    def begin(self, data_keys: dict[str, dict]) -> None: ...  # a new stream (segment) with these waveform keys
    def write(self, arrays: dict[str, np.ndarray]) -> list[tuple[str, dict]]: ...  # stream_resource/_datum docs
    def close(self) -> None: ...


def compliance_limits(signal: Any) -> tuple[float, float]:
    """The potentials (V) the potentiostat carrying ``signal`` can apply (its ``compliance``)."""
    return tuple(signal.root.compliance)


def setpoint_limits(signal: Any) -> tuple[float, float]:
    """± the current range (A) of the potentiostat's working channel: the currents it can impose."""
    root = signal.root
    channel = root.tip if root.working_channel.get() == "tip" else root.substrate
    r = abs(float(channel.current_range.get()))
    return (-r, r)


def _potential(value: float) -> Cpt:
    return Cpt(QuantitySignal, value=value, kind="config", units="V", precision=4, limits=compliance_limits,
               limits_name="potentiostat compliance")


def _positive(value: float, units: str, *, kind: str = "config", precision: int | None = None) -> Cpt:
    return Cpt(QuantitySignal, value=value, kind=kind, units=units, precision=precision, limits=(0.0, math.inf),
               limits_name="allowed range")


class PotentiostatChannel(Device):
    """One working electrode: potential setpoint (V, within compliance) and measured current (A)."""

    potential = _potential(0.0)
    current = Cpt(QuantitySignal, value=0.0, kind="hinted", units="A", precision=CURRENT_PRECISION)
    current_range = _positive(1e-6, "A", precision=CURRENT_PRECISION)


class TechniqueParameters(Device):
    """Parameters of the technique run on each trigger (V, V/s, s, A); potentials within compliance, the current
    setpoint within the working channel's range."""

    e_start = _potential(0.0)
    e_vertex1 = _potential(-0.5)
    e_vertex2 = _potential(0.5)
    e_end = _potential(0.5)
    e_hold = _potential(0.0)
    scan_rate = _positive(0.1, "V/s")
    n_cycles = Cpt(Signal, value=1, kind="config")
    duration = _positive(1.0, "s")
    current_setpoint = Cpt(QuantitySignal, value=0.0, kind="config", units="A", precision=CURRENT_PRECISION,
                           limits=setpoint_limits, limits_name="working channel's current range")
    n_samples = Cpt(Signal, value=1000, kind="config")
    integration_time = _positive(0.01, "s")


class WaveformSignals(Device):
    """The last acquired waveform."""

    time = Cpt(Signal, value=np.zeros(0), kind="normal")
    potential = Cpt(Signal, value=np.zeros(0), kind="normal")
    current = Cpt(Signal, value=np.zeros(0), kind="normal")
    collector_current = Cpt(Signal, value=np.zeros(0), kind="normal")


class Bipotentiostat(WritesWaveformAssets, Device):
    """Two-channel potentiostat.  The simulated one computes its readings from a :class:`BenchModel`."""

    tip = Cpt(PotentiostatChannel, "")
    substrate = Cpt(PotentiostatChannel, "")
    technique = Cpt(Signal, value="READ", kind="config")
    working_channel = Cpt(Signal, value="substrate", kind="config")
    cell_on = Cpt(Signal, value=1, kind="config")
    params = Cpt(TechniqueParameters, "")
    wf = Cpt(WaveformSignals, "")
    # the instrument's status flags, watched by suspenders (espt_bluesky.suspenders): a run pauses while the
    # instrument does not answer or flags an overload.  (A reading beyond the current range fails its trigger
    # with Overload instead: that run ends in a known state.)  On the bench both are fault-injection points.
    online = Cpt(Signal, value=1, kind="omitted")
    overload = Cpt(Signal, value=0, kind="omitted")

    def __init__(self, *args, probe: Probe | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe = probe
        self._init_assets()
        self._not_measured = False
        for ch in (self.tip, self.substrate):  # a new current range clears a latched overload
            ch.current_range.subscribe(self._clear_overload, run=False)

    def _clear_overload(self, **kwargs) -> None:
        if self.overload.get():
            self.overload.put(0)

    # --------------------------------------------------------- configuration helpers
    def configure_technique(self, technique: str, channel: str = "substrate", **params: Any) -> None:
        """Set the technique, its channel and parameters in one call, validating them first.

        Raises :class:`~espt_bluesky.errors.InvalidArgument` naming the argument for an unknown technique or
        parameter, a non-positive scan rate or duration, equal CV vertices, or potentials beyond compliance.
        """
        for sig, v in self.technique_settings(technique, channel, **params):
            sig.put(v)

    def technique_settings(self, technique: str, channel: str = "substrate", **params: Any) -> list[tuple[Any, Any]]:
        """The ``(signal, value)`` writes that configure a technique, validated, without writing anything.

        Only values that differ from the present ones are listed.  Plans apply them as messages
        (:func:`espt_bluesky.plans._common.configure_technique`), so a plan previewed with ``summarize_plan``
        changes nothing; :meth:`configure_technique` applies them at once (interactive use).
        """
        technique, channel = self.check_technique(technique, channel, **params)
        todo = [(getattr(self.params, k), v) for k, v in params.items()]
        todo += [(self.technique, technique), (self.working_channel, channel)]
        return [(sig, v) for sig, v in todo if sig.get() != v]

    def open_circuit_settings(self) -> list[tuple[Any, Any]]:
        """The ``(signal, value)`` writes that put the cell at open circuit (see :meth:`open_circuit`)."""
        return [(self.cell_on, 0), (self.technique, "READ")]

    compliance: tuple[float, float] = (-10.0, 10.0)  # V, the potentials the instrument can apply

    def check_technique(self, technique: str, channel: str = "substrate", **params: Any) -> tuple[str, str]:
        """Validate a technique request against this potentiostat without applying it.

        Unknown parameters, bad values and potentials beyond :attr:`compliance` raise
        :class:`~espt_bluesky.errors.InvalidArgument` naming the argument; parameters not given keep their
        present values.  Returns the canonical (technique, channel).
        """
        technique = check_choice("technique", technique, TECHNIQUES)
        channel = check_choice("channel", channel, ("tip", "substrate"))
        names = set(self.params.component_names)
        for k, v in params.items():
            if k not in names:
                raise InvalidArgument(f"{k!r} is not a technique parameter; allowed: {sorted(names)}")
            check_parameter(k, v)
        merged = {k: getattr(self.params, k).get() for k in names}
        merged.update(params)
        validate_technique(technique, merged, tuple(self.compliance))
        return technique, channel

    # --------------------------------------------------------- bluesky protocol
    def _waveform_active(self) -> bool:
        return self.technique.get() != "READ"

    def _wf_keys(self) -> dict[str, str]:
        return {f: getattr(self.wf, f).name for f in WAVEFORM_FIELDS}

    def describe(self) -> dict[str, dict]:
        """Data keys; the waveform keys only while a waveform technique is set (external with an asset writer).

        With an asset writer, each call starts a new segment of it: the RunEngine describes the device once per
        stream of a run, so every stream's waveforms go to assets of their own.
        """
        desc = super().describe()
        wf_keys = self._wf_keys()
        n = int(self.params.n_samples.get())
        for field, key in wf_keys.items():
            if not self._waveform_active():
                desc.pop(key, None)
                continue
            desc[key] = dict(desc.get(key, {}), source=desc.get(key, {}).get("source", f"SIM:{key}"),
                             dtype="array", dtype_numpy="<f8", shape=[n], dims=[WAVEFORM_DIM],
                             units=WAVEFORM_UNITS[field])
        for ch in (self.tip, self.substrate):
            k = ch.current.name
            if k in desc:
                desc[k].update(units="A", dtype_numpy="<f8")
        return self._describe_assets(desc)

    def _asset_keys(self) -> list[str]:
        return list(self._wf_keys().values())

    def _checked_waveforms(self, reading: dict[str, dict]) -> dict[str, dict]:
        """Hook for hardware whose waveform signals may lag the acquisition (see the EPICS potentiostat)."""
        return reading

    def read(self) -> dict[str, dict]:
        """Currents; the last waveform while a waveform technique is set.

        With an asset writer the waveform is not in the reading: the waveform of a new acquisition is written
        by :meth:`collect_asset_docs`, which the RunEngine calls right after this read.
        """
        out = super().read()
        wf_keys = list(self._wf_keys().values())
        if not self._waveform_active():
            for k in wf_keys:
                out.pop(k, None)
        if self._not_measured:  # see mark_not_measured: NaN of the usual shapes, once
            self._not_measured = False
            n = int(self.params.n_samples.get())
            for k in set(wf_keys) | {self.tip.current.name, self.substrate.current.name}:
                if k in out:
                    out[k] = dict(out[k], value=np.full(n, np.nan) if k in wf_keys else float("nan"))
        else:
            out = self._checked_waveforms(out)
        return self._read_assets(out)

    def mark_not_measured(self) -> None:
        """Make the next ``read()`` say that nothing was measured (e.g. a hop that was skipped after a fault).

        Both currents and, with a waveform technique configured, the waveform (``n_samples`` long, also written
        to the asset writer if there is one) read as NaN, so the event recording the skipped point keeps the
        stream's data keys and shapes instead of repeating the previous measurement.
        """
        self._not_measured = True
        self._acquired = True  # an acquisition that measured nothing: its NaN row is written like any other

    def read_configuration(self) -> dict[str, dict]:
        cfg = super().read_configuration()
        if self.probe is not None:
            cfg.update(self.probe.read_configuration())
        return cfg

    def describe_configuration(self) -> dict[str, dict]:
        cfg = super().describe_configuration()
        if self.probe is not None:
            cfg.update(self.probe.describe_configuration())
        return cfg

    def open_circuit(self) -> None:
        """Disconnect the cell (open circuit): no current flows until ``cell_on`` is set again or a technique runs."""
        for sig, v in self.open_circuit_settings():
            sig.put(v)


def check_parameter(name: str, value: Any) -> None:
    """One technique parameter given by the caller: counts are integers (``n_samples`` within
    :data:`espt_bluesky.errors.LIMITS`), everything else a finite number."""
    if name == "n_samples":
        check_samples_cap(name, value)
    elif name == "n_cycles":
        check_int(name, value, 1, 10_000)
    else:
        check_number(name, value)


def validate_technique(technique: str, p: dict[str, Any], compliance: tuple[float, float]) -> None:
    """Check a technique's parameters; raise InvalidArgument naming the first bad one."""
    lo, hi = compliance
    n = p.get("n_samples", 1000)
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise InvalidArgument(f"n_samples={n!r} must be an integer >= 2")
    check_positive("integration_time", p.get("integration_time", 0.01), units="s")
    if technique in ("CV", "LSV"):
        check_positive("scan_rate", p["scan_rate"], units="V/s")
        names = ("e_start", "e_vertex1", "e_vertex2") if technique == "CV" else ("e_start", "e_end")
        for k in names:
            check_range(k, p[k], lo, hi, units="V")
    if technique == "CV":
        if p["e_vertex1"] == p["e_vertex2"]:
            raise InvalidArgument(f"e_vertex1={p['e_vertex1']!r} V equals e_vertex2: the window is empty")
        if not (min(p["e_vertex1"], p["e_vertex2"]) <= p["e_start"] <= max(p["e_vertex1"], p["e_vertex2"])):
            raise InvalidArgument(f"e_start={p['e_start']!r} V must lie between the vertices "
                                  f"{p['e_vertex1']!r} and {p['e_vertex2']!r} V")
        if int(p["n_cycles"]) < 1:
            raise InvalidArgument(f"n_cycles={p['n_cycles']!r} must be >= 1")
    if technique == "LSV" and p["e_start"] == p["e_end"]:
        raise InvalidArgument(f"e_end={p['e_end']!r} V equals e_start: the sweep is empty")
    if technique in ("CA", "OCP", "CP"):
        check_positive("duration", p["duration"], units="s")
    if technique == "CA":
        check_range("e_hold", p["e_hold"], lo, hi, units="V")
    if technique == "CP":
        check_number("current_setpoint", p["current_setpoint"], units="A")


def technique_program(technique: str, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Time (s) and program (V, or A for CP) of a technique with ``n_samples`` points."""
    from ..physics import voltammetry

    n = int(p["n_samples"])
    if technique == "CV":
        return voltammetry.cv_waveform(p["e_start"], p["e_vertex1"], p["e_vertex2"], p["scan_rate"],
                                       int(p["n_cycles"]), n)
    if technique == "LSV":
        return voltammetry.lsv_waveform(p["e_start"], p["e_end"], p["scan_rate"], n)
    t = np.linspace(0.0, float(p["duration"]), n)
    if technique == "CA":
        return t, np.full(n, float(p["e_hold"]))
    if technique == "CP":
        return t, np.full(n, float(p["current_setpoint"]))
    return t, np.zeros(n)  # OCP: zero current


class SimBipotentiostat(Bipotentiostat):
    """Simulated bipotentiostat reading a :class:`~espt_bluesky.physics.bench_model.BenchModel`."""

    def attach(self, model: BenchModel, time_scale: float = 0.0) -> None:
        self._model = model
        self._time_scale = time_scale
        self.substrate.current_range.put(1e-2)
        e_ocp = model.environment["e_ocp"]
        self.substrate.potential.put(e_ocp)
        if model.technique == "SECM":
            self.tip.potential.put(model.environment["mediator"]["E0"] + 0.35)
        elif model.technique == "SICM":
            self.tip.potential.put(model.options.ion_bias)
        else:
            self.tip.potential.put(e_ocp)
        span = 5.0
        self.compliance = (e_ocp - span, e_ocp + span) if model.environment["reference_electrode"] != "Li+/Li" \
            else (-0.5, 5.0)

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)
        model = self._model
        technique = self.technique.get()
        duration = 0.0
        error = None
        self._note_acquisition()
        try:
            if not self.online.get():
                raise InstrumentOffline(f"{self.online.name}=0: the potentiostat does not answer")
            if technique not in ("READ", "OCP") and not self.cell_on.get():
                self.cell_on.put(1)  # a technique connects the cell, as a potentiostat does when it starts one
            if technique == "READ" and not self.cell_on.get():
                i_tip = i_sub = 0.0
                duration = self.params.integration_time.get()
                model.clock += duration
            elif technique == "READ":
                duration = self.params.integration_time.get()
                model.clock += duration
                i_tip, i_sub = self._read_scalar()
            else:
                p = {k: getattr(self.params, k).get() for k in self.params.component_names}
                t, program = technique_program(technique, p)
                channel = self.working_channel.get()
                other = self.substrate if channel == "tip" else self.tip
                wave = model.run_program(channel, technique, t, program, other.potential.get())
                duration = float(t[-1] - t[0])
                for f in WAVEFORM_FIELDS:
                    getattr(self.wf, f).put(np.asarray(wave[f], dtype=float))
                i_drv, i_oth = float(wave["current"][-1]), float(wave["collector_current"][-1])
                i_tip, i_sub = (i_drv, i_oth) if channel == "tip" else (i_oth, i_drv)
            self.tip.current.put(i_tip)
            self.substrate.current.put(i_sub)
            for ch in (self.tip, self.substrate):
                if abs(ch.current.get()) > ch.current_range.get():
                    raise Overload(f"{ch.name}: |current| = {abs(ch.current.get()):.3g} A exceeds the current "
                                   f"range {ch.current_range.get():.3g} A")
        except Exception as exc:  # reported through the status, as hardware would
            error = exc

        return complete_status(status, error, duration, self._time_scale)

    def _read_scalar(self) -> tuple[float, float]:
        return self._model.read_currents(self.tip.potential.get(), self.substrate.potential.get(),
                                         self.params.integration_time.get())
