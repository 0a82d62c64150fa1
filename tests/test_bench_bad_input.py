"""Bad input to the bench and its devices: a clear error naming the argument, before anything moves."""

import pytest
from ophyd.utils import LimitError

from espt_bluesky.devices import UME, AFMCantilever, Nanopipette, make_sim_bench
from espt_bluesky.errors import InvalidArgument


def test_unknown_technique_and_sample():
    with pytest.raises(InvalidArgument, match="technique='STM'"):
        make_sim_bench("STM")
    with pytest.raises(InvalidArgument, match="sample='graphene'"):
        make_sim_bench("SECM", "graphene")
    with pytest.raises(InvalidArgument, match="unknown bench option"):
        make_sim_bench("SECM", noize=0.1)


@pytest.mark.parametrize("make, match", [
    (lambda: UME(radius=-1.0), "radius=-1.0"),
    (lambda: UME(radius=5.0, rg=0.9), "rg=0.9"),
    (lambda: UME(radius=5.0, rg=1.0), "rg=1.0"),
    (lambda: Nanopipette(inner_radius=0.0), "inner_radius=0.0"),
    (lambda: Nanopipette(inner_radius=0.1, outer_radius=0.05), "outer_radius=0.05"),
    (lambda: AFMCantilever(spring_constant=-2), "spring_constant=-2"),
    (lambda: UME(radius=float("nan")), "radius=nan"),
])
def test_probe_geometry_validated(make, match):
    with pytest.raises(InvalidArgument, match=match):
        make()


def test_probe_must_suit_technique():
    with pytest.raises(InvalidArgument, match="probe=UME"):
        make_sim_bench("SICM", probe=UME())


def test_soft_limit_violation_raises_before_motion():
    bench = make_sim_bench("SECM", "patterned")
    before = bench.model.position.copy()
    with pytest.raises(LimitError, match="stage_x.*500"):
        bench.stage.x.set(500.0)
    assert (bench.model.position == before).all()


def test_technique_parameters_validated():
    bench = make_sim_bench("SECCM", "hopg")
    p = bench.potentiostat
    with pytest.raises(InvalidArgument, match="scan_rate=0"):
        p.configure_technique("CV", e_start=3.0, e_vertex1=0.0, e_vertex2=3.0, scan_rate=0)
    with pytest.raises(InvalidArgument, match="e_vertex1"):
        p.configure_technique("CV", e_start=1.0, e_vertex1=1.0, e_vertex2=1.0, scan_rate=0.1)
    with pytest.raises(InvalidArgument, match="e_vertex1=-3.0"):
        p.configure_technique("CV", e_start=1.0, e_vertex1=-3.0, e_vertex2=3.0, scan_rate=0.1)
    with pytest.raises(InvalidArgument, match="technique='EIS'"):
        p.configure_technique("EIS")
    assert p.technique.get() == "READ"  # nothing was changed by the refused calls


def test_tip_crash_is_reported_and_stops_at_contact():
    from espt_bluesky.errors import TipCrash

    bench = make_sim_bench("SECM", "patterned")
    st = bench.stage.z.set(-5.0)
    with pytest.raises(TipCrash):
        st.wait()
    assert bench.model.crashed
    assert bench.model.clearance() >= -1e-6  # the stage stopped where the probe touched
