"""The XYZ stage: three axes with soft limits and velocity, positions in µm.

The simulated axes carry the same component names as ophyd's ``EpicsMotor`` (``user_readback``,
``user_setpoint``, ``velocity``, ``low_limit_travel``, ``high_limit_travel``, ``motor_egu``) so a plan written
against one runs on the other.  Each axis reads back under the axis's own name (``stage_x`` ...).
"""

from __future__ import annotations


from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ..errors import TipCrash, check_number
from ..physics.bench_model import BenchModel
from .sim_status import SimMoveStatus, complete_status
from .signals import LimitViolation, QuantitySignal

AXES = ("x", "y", "z")
#: Default soft limits of the simulated stage (µm).
XY_LIMITS = (-25.0, 125.0)
Z_LIMITS = (-20.0, 2000.0)


class SimAxis(Device):
    """One simulated stage axis moving the bench's probe (or sample) along ``x``, ``y`` or ``z``."""

    user_readback = Cpt(QuantitySignal, value=0.0, kind="hinted", units="um", precision=4)
    user_setpoint = Cpt(QuantitySignal, value=0.0, kind="normal", units="um", precision=4,
                        limits=lambda sig: sig.parent.limits, limits_name="soft limits")
    velocity = Cpt(QuantitySignal, value=100.0, kind="config", units="um/s")
    low_limit_travel = Cpt(QuantitySignal, value=-25.0, kind="config", units="um")
    high_limit_travel = Cpt(QuantitySignal, value=125.0, kind="config", units="um")
    motor_egu = Cpt(Signal, value="um", kind="config")
    user_offset = Cpt(QuantitySignal, value=0.0, kind="config", units="um")  # as EpicsMotor (%wa shows it)

    def __init__(self, *args, axis: str = "x", **kwargs):
        super().__init__(*args, **kwargs)
        self.user_readback.name = self.name
        self._axis = AXES.index(axis)
        self._model: BenchModel | None = None
        self._time_scale = 0.0

    def attach(self, model: BenchModel, time_scale: float = 0.0) -> None:
        """Couple the axis to a bench model."""
        self._model = model
        self._time_scale = time_scale
        self.sync()

    def sync(self) -> None:
        """Copy the model's true position into the readback."""
        if self._model is not None:
            pos = float(self._model.position[self._axis])
            self.user_readback.put(pos)

    @property
    def position(self) -> float:
        return self.user_readback.get()

    @property
    def limits(self) -> tuple[float, float]:
        return (self.low_limit_travel.get(), self.high_limit_travel.get())

    @property
    def egu(self) -> str:
        return self.motor_egu.get()

    def check_value(self, value: float) -> None:
        """Raise :class:`~espt_bluesky.devices.signals.LimitViolation` (an ophyd ``LimitError``) if ``value`` is
        outside the soft limits, or :class:`~espt_bluesky.errors.InvalidArgument` if it is not a number (nothing
        moves)."""
        value = check_number(f"{self.name} target", value)
        low, high = self.limits
        if not (low <= value <= high):
            raise LimitViolation(f"{self.name}={value!r} um is outside its soft limits [{low:g}, {high:g}] um; "
                                 f"nothing moved")

    def set(self, value: float, **kwargs) -> DeviceStatus:
        self.check_value(value)
        value = float(value)
        self.user_setpoint.put(value)
        status = SimMoveStatus(self, initial=self.position, target=value, unit=self.egu)
        model = self._model
        target = model.position.copy()
        target[self._axis] = value
        try:
            duration = model.move_to(*target, velocity=self.velocity.get())
            error = None
        except TipCrash as exc:
            duration, error = 0.0, exc
        stage = self.parent
        for ax in (stage.x, stage.y, stage.z) if isinstance(stage, XYZStage) else (self,):
            ax.sync()

        return complete_status(status, error, duration, self._time_scale)

    def move(self, value: float, wait: bool = True, timeout: float | None = None) -> DeviceStatus:
        """Move (interactive use); blocks until done when ``wait``."""
        st = self.set(value)
        if wait:
            st.wait(timeout)
        return st

    def stop(self, *, success: bool = False) -> None:
        """Moves of the simulated axis complete at once; nothing to stop."""


class XYZStage(Device):
    """Three orthogonal axes in µm; ``z`` positive away from the sample."""

    x = Cpt(SimAxis, "", axis="x")
    y = Cpt(SimAxis, "", axis="y")
    z = Cpt(SimAxis, "", axis="z")

    def attach(self, model: BenchModel, time_scale: float = 0.0, z_limits: tuple[float, float] = Z_LIMITS,
               xy_limits: tuple[float, float] = XY_LIMITS, xy_velocity: float = 100.0,
               z_velocity: float = 20.0) -> None:
        """Couple every axis to ``model`` and set limits (µm) and velocities (µm/s)."""
        for ax in (self.x, self.y):
            ax.low_limit_travel.put(xy_limits[0])
            ax.high_limit_travel.put(xy_limits[1])
            ax.velocity.put(xy_velocity)
        self.z.low_limit_travel.put(z_limits[0])
        self.z.high_limit_travel.put(z_limits[1])
        self.z.velocity.put(z_velocity)
        for ax in (self.x, self.y, self.z):
            ax.attach(model, time_scale)
