"""EC-AFM head: contact-mode height and deflection, and force curves on demand.

Keys: ``afm_height`` (µm, hinted), ``afm_deflection`` (m); with ``mode="force_curve"`` each trigger also records
``afm_fc_z`` (µm, piezo travel toward the sample), ``afm_fc_deflection`` (m) and ``afm_fc_force`` (N), each of
shape ``(n_points,)`` with dimension ``force_curve_index``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ..errors import check_choice, check_positive, check_samples_cap
from ..physics.bench_model import BenchModel
from .probes import Probe
from .signals import QuantitySignal

FC_FIELDS = {"z": "um", "deflection": "m", "force": "N"}


class ECAFMHead(Device):
    """AFM head over the electrochemical cell; the cantilever is its probe configuration."""

    height = Cpt(QuantitySignal, value=0.0, kind="hinted", units="um")
    deflection = Cpt(QuantitySignal, value=0.0, kind="normal", units="m")
    setpoint = Cpt(QuantitySignal, value=1e-9, kind="config", units="m")
    mode = Cpt(Signal, value="contact", kind="config")
    fc_travel = Cpt(QuantitySignal, value=0.05, kind="config", units="um")
    fc_points = Cpt(Signal, value=500, kind="config")
    fc_z = Cpt(Signal, value=np.zeros(0), kind="normal")
    fc_deflection = Cpt(Signal, value=np.zeros(0), kind="normal")
    fc_force = Cpt(Signal, value=np.zeros(0), kind="normal")

    def __init__(self, *args, probe: Probe | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe = probe
        self._model: BenchModel | None = None

    def attach(self, model: BenchModel, time_scale: float = 0.0) -> None:
        self._model = model
        self._time_scale = time_scale

    def configure_force_curve(self, travel: float = 0.05, n_points: int = 500) -> None:
        """Switch to force-curve mode: ``travel`` µm of piezo extension beyond the tip's present height."""
        for sig, v in self.force_curve_settings(travel, n_points):
            sig.put(v)

    def force_curve_settings(self, travel: float = 0.05, n_points: int = 500) -> list[tuple[Any, Any]]:
        """The ``(signal, value)`` writes of :meth:`configure_force_curve`, validated, without writing anything."""
        check_positive("travel", travel, units="µm")
        check_samples_cap("n_points", n_points)
        return [(self.fc_travel, float(travel)), (self.fc_points, int(n_points)), (self.mode, "force_curve")]

    def set_mode(self, mode: str) -> None:
        for sig, v in self.mode_settings(mode):
            sig.put(v)

    def mode_settings(self, mode: str) -> list[tuple[Any, Any]]:
        """The ``(signal, value)`` write that selects ``mode`` ("contact" or "force_curve")."""
        return [(self.mode, check_choice("mode", mode, ("contact", "force_curve")))]

    def _fc_keys(self):
        return {f: getattr(self, f"fc_{f}").name for f in FC_FIELDS}

    def describe(self):
        desc = super().describe()
        n = int(self.fc_points.get())
        for f, key in self._fc_keys().items():
            if self.mode.get() != "force_curve":
                desc.pop(key, None)
            else:
                desc[key] = dict(source=f"SIM:{key}", dtype="array", dtype_numpy="<f8", shape=[n],
                                 dims=["force_curve_index"], units=FC_FIELDS[f])
        desc[self.height.name].update(units="um")
        desc[self.deflection.name].update(units="m")
        return desc

    def read(self):
        out = super().read()
        if self.mode.get() != "force_curve":
            for key in self._fc_keys().values():
                out.pop(key, None)
        return out

    def read_configuration(self):
        cfg = super().read_configuration()
        if self.probe is not None:
            cfg.update(self.probe.read_configuration())
        return cfg

    def describe_configuration(self):
        cfg = super().describe_configuration()
        if self.probe is not None:
            cfg.update(self.probe.describe_configuration())
        return cfg

    def trigger(self) -> DeviceStatus:
        model = self._model
        status = DeviceStatus(self)
        self.height.put(model.afm_height())
        k = model.probe.spring_constant
        self.deflection.put(float(self.setpoint.get() + (model.rng.normal(0, 1e-11) if model.options.noise else 0.0)))
        if self.mode.get() == "force_curve":
            gap = model.distance()
            travel = np.linspace(0.0, gap + float(self.fc_travel.get()), int(self.fc_points.get()))
            fc = model.force_curve(travel)
            self.fc_z.put(fc["z"])
            self.fc_deflection.put(fc["deflection"])
            self.fc_force.put(fc["force"])
            _ = k
        status.set_finished()
        return status
