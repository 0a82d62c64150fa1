"""An EPICS-configured session: ``[epics] prefix = ...`` in the session configuration builds the EPICS instrument in
the same IPython profile, against a caproto bench IOC on loopback (started as tests/test_epics.py starts them).

The session runs in its own process: libca reads the Channel Access settings once per process, and this one's
may already belong to another test module's IOCs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from espt_bluesky.ioc.launch import IOCProcess, ca_environment, free_ports

from test_session_exit import HANG, profile_copy, session_env


def test_epics_section_is_checked():
    from espt_bluesky.errors import InvalidArgument
    from espt_bluesky.session import build_session

    with pytest.raises(InvalidArgument, match=r"unknown key\(s\) \['prefx'\]"):
        build_session({"epics": {"prefx": "E:"}, "storage": {"mode": "none"}, "session": {"md_dir": ""}})
    with pytest.raises(InvalidArgument, match="prefix"):
        build_session({"epics": {"technique": "SECM"}, "storage": {"mode": "none"}, "session": {"md_dir": ""}})


@pytest.mark.slow
def test_profile_with_an_epics_section_drives_the_ioc(tmp_path):
    server, repeater = free_ports(2)
    env = ca_environment([server], repeater)
    ioc = IOCProcess("bench", "ES1:", server, env, technique="SECM", sample="patterned", seed=2,
                     log_path=str(tmp_path / "ioc.log")).start()
    try:
        cfg = tmp_path / "espt.toml"
        cfg.write_text(textwrap.dedent(f"""
            [epics]
            prefix = "ES1:"
            ca_addr_list = "127.0.0.1:{server}"
            ca_auto_addr_list = false
            ca_repeater_port = {repeater}
            [storage]
            mode = "in_process"
        """))
        code = textwrap.dedent("""
            import bluesky.plan_stubs as bps
            from espt_bluesky.devices.epics import EpicsBipotentiostat
            print("KIND", type(pstat).__name__, stage.x.prefix, hopper)
            RE(bps.mv(stage.z, 60.0))
            r = RE(approach(stage, pstat, technique="SECM", feedback="positive", context=bench.metadata()))
            print("APPROACH", r.exit_status, round(r.plan_result, 3))
            try:
                RE(bps.mv(pstat.tip.potential, 50.0))
            except Exception as exc:
                print("REFUSED", type(exc).__name__, exc)
            print("TIP", pstat.tip.potential.get())
            r = RE(constant_height_image(stage, pstat, x_range=(40, 60, 3), y_range=(40, 60, 3), height=10.0,
                                         plane=r.plan_result, context=bench.metadata()))
            print("IMAGE", r.exit_status, session.live_map.image.shape, session.live_map.skipped)
            print("DESCRIBE", pstat.describe()["pstat_tip_current"]["units"], stage.describe()["stage_z"].get("units"))
        """)
        proc = subprocess.run([sys.executable, "-m", "IPython", f"--profile-dir={profile_copy(tmp_path)}",
                               "--no-banner", "--colors=NoColor", "-c", code],
                              env=session_env(tmp_path / "data", ESPT_CONFIG=str(cfg)), cwd=tmp_path,
                              capture_output=True, text=True, timeout=HANG)
    finally:
        ioc.stop()
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "instrument: EPICS SECM instrument: stage 'ES1:stage:', potentiostat 'ES1:pstat:'" in out
    assert "KIND EpicsBipotentiostat ES1:stage:x None" in out
    assert "APPROACH success" in out
    assert "REFUSED LimitViolation pstat_tip_potential=50.0 V is outside its potentiostat compliance" in out
    tip = [line for line in out.splitlines() if line.startswith("TIP ")][0]
    assert float(tip.split()[1]) != 50.0
    assert "IMAGE success (3, 3) None" in out
    assert "DESCRIBE A um" in out
