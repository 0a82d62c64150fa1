"""Units on every numeric data key, a display precision that shows pA currents, and limits enforced by the devices
themselves: ``bps.mv`` beyond compliance or soft limits raises a clear error and nothing moves."""

from __future__ import annotations

import re

import pytest
import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky.callbacks.best_effort import BestEffortCallback
from ophyd.utils import LimitError

from espt_bluesky.devices import make_sim_bench
from espt_bluesky.devices.signals import LimitViolation
from espt_bluesky.errors import InvalidArgument
from espt_bluesky.plans import approach, hopping_scan

UNITS = {"um", "um/s", "V", "A", "s", "V/s", "m", "N", "N/m", "deg", "1", "C", "Pa"}


def _unitless_numbers(descriptions) -> list[str]:
    """Float keys without units (integer keys are counts, indices and flags)."""
    return [k for d in descriptions for k, v in d.items() if v["dtype"] == "number" and v.get("units") not in UNITS]


@pytest.mark.parametrize("technique", ["SECM", "SICM", "SECCM", "EC-AFM"])
def test_every_numeric_key_and_configuration_has_units(technique):
    b = make_sim_bench(technique)
    devices = [d for d in (b.stage, b.potentiostat, b.probe, b.afm, b.hopper) if d is not None]
    descs = [d.describe() for d in devices] + [d.describe_configuration() for d in devices]
    assert _unitless_numbers(descs) == []
    keys = {k: v for d in descs for k, v in d.items()}
    assert {keys[k]["units"] for k in ("stage_x", "stage_y", "stage_z")} == {"um"}
    assert keys["pstat_tip_potential"]["units"] == "V" and keys["pstat_params_scan_rate"]["units"] == "V/s"
    assert keys["pstat_params_duration"]["units"] == "s" and keys["pstat_tip_current"]["units"] == "A"
    if b.hopper is not None:
        assert keys["hopper_surface_z"]["units"] == "um" and keys["hopper_reference_current"]["units"] == "A"


def test_plan_streams_carry_units(RE):
    b = make_sim_bench("SECCM", "patterned")
    RE(approach(b.stage, b.potentiostat, technique="SECCM"))
    RE(hopping_scan(b.stage, b.potentiostat, technique="SECCM", x_range=(45, 55, 2), y_range=(45, 55, 2),
                    mode="plan"))
    descs = RE.collector.of("descriptor")
    assert {d["name"] for d in descs} >= {"approach", "surface", "primary"}
    data_keys = [d["data_keys"] for d in descs]
    assert _unitless_numbers(data_keys) == []
    conf = [c["data_keys"] for d in descs for c in d["configuration"].values()]
    assert _unitless_numbers(conf) == []
    surface = next(d for d in descs if d["name"] == "surface")["data_keys"]
    assert surface["surface_z"]["units"] == "um" and surface["stop_z"]["units"] == "um"


def _table_values(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"^\|\s+\d+ \|[^|]+\|\s+(-?\d+\.\d+) \|", text, flags=re.M)]


def test_best_effort_table_shows_nano_and_picoamp_currents(RE, capsys):
    b = make_sim_bench("SECM", "patterned")
    bec = BestEffortCallback()
    bec.disable_plots()
    RE.subscribe(bec)
    RE(bp.count([b.potentiostat], 2))  # an SECM tip current: a few nA
    i_tip = b.potentiostat.tip.current.get()
    shown = _table_values(capsys.readouterr().out)
    assert len(shown) == 2 and 1e-10 < abs(i_tip) < 1e-7
    assert shown[-1] == pytest.approx(i_tip, rel=1e-4)  # not 0.000
    b.potentiostat.tip.current.put(1.234e-12)  # an SECCM-scale current, read as it is
    RE(bp.count([b.potentiostat.tip.current]))
    assert _table_values(capsys.readouterr().out) == [pytest.approx(1.23e-12, rel=1e-6)]


@pytest.mark.parametrize("signal,value,limits", [
    ("tip.potential", 50.0, "[-5, 5] V"),
    ("substrate.potential", -6.0, "[-5, 5] V"),
    ("params.e_vertex1", 9.0, "[-5, 5] V"),
    ("params.current_setpoint", 1.0, "[-0.01, 0.01] A"),
    ("params.scan_rate", -0.1, "[0, inf] V/s"),
])
def test_potentiostat_refuses_values_beyond_its_limits(RE, signal, value, limits):
    b = make_sim_bench("SECM", "patterned")
    p = b.potentiostat
    sig = p
    for part in signal.split("."):
        sig = getattr(sig, part)
    before = sig.get()
    with pytest.raises(LimitViolation) as info:
        RE(bps.mv(sig, value))
    msg = str(info.value)
    assert sig.name in msg and repr(value) in msg and limits in msg
    assert sig.get() == before and RE.collector.docs == []
    assert isinstance(info.value, InvalidArgument) and isinstance(info.value, LimitError)


@pytest.mark.parametrize("axis,value", [("x", 500.0), ("y", -30.0), ("z", 5000.0)])
def test_stage_refuses_moves_beyond_soft_limits(RE, axis, value):
    b = make_sim_bench("SECM", "patterned")
    ax = getattr(b.stage, axis)
    true_before = b.model.position.copy()
    lo, hi = ax.limits
    with pytest.raises(LimitViolation, match=rf"{ax.name}={value!r} um is outside its soft limits "
                                             rf"\[{lo:g}, {hi:g}\] um"):
        RE(bps.mv(ax, value))
    assert (b.model.position == true_before).all()


def test_compliance_follows_the_reference_electrode(RE):
    b = make_sim_bench("SECCM", "hopg")  # Li+/Li: compliance (-0.5, 5.0) V
    assert b.potentiostat.compliance == (-0.5, 5.0)
    RE(bps.mv(b.potentiostat.substrate.potential, 4.8))
    with pytest.raises(LimitViolation, match=r"\[-0.5, 5\] V"):
        RE(bps.mv(b.potentiostat.substrate.potential, -1.0))
    assert b.potentiostat.substrate.potential.get() == 4.8
