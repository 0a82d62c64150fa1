"""The espt_bluesky session: IPython profile (``ipython --profile-dir=profile_collection``) and bluesky-queueserver
startup directory (``start-re-manager --startup-dir profile_collection/startup``).

Imports and instantiation only; the logic is in espt_bluesky.profile and espt_bluesky.session.  Configuration:
$ESPT_CONFIG (a TOML file: [bench] or [epics], [storage], [session]), $ESPT_BENCH, $ESPT_DATA_DIR, $ESPT_TILED_URI.
"""
import bluesky.plan_stubs as bps  # noqa: F401
import bluesky.plans as bp  # noqa: F401
from bluesky.plans import (count, grid_scan, list_grid_scan, log_scan, rel_grid_scan, rel_list_scan,  # noqa: F401
                           rel_scan, scan, spiral, spiral_fermat)
from bluesky.simulators import check_limits, summarize_plan  # noqa: F401

from espt_bluesky.plans import (approach, combinatorial_sweep, constant_height_image, hopping_scan,  # noqa: F401
                                measure_tilt, operando_imaging, sgtc)
from espt_bluesky.plans.fly import fly_hops, fly_image  # noqa: F401
from espt_bluesky.plans.adaptive import adaptive_hopping_scan  # noqa: F401
from espt_bluesky.plans.standard import list_scan  # noqa: F401  (a signature the queue server understands)
from espt_bluesky.profile import start_session, wh_pos  # noqa: F401
from espt_bluesky.storage import read_map, write_product  # noqa: F401

session = start_session()  # prints the banner: instrument, catalog, data directory
RE = session.RE
catalog = session.catalog
bec = session.bec
sd = session.sd
bench = session.bench
stage = session.devices["stage"]
pstat = session.devices["pstat"]
probe = session.devices["probe"]
hopper = session.devices.get("hopper")  # device-side hopping controller (SICM/SECCM benches)
afm = session.devices.get("afm")  # EC-AFM head (EC-AFM benches)
fly_stage = session.devices.get("fly_stage")  # ophyd-async fly stage (SECM/SICM/EC-AFM benches with a catalog)
fly_det = session.devices.get("fly_det")  # ophyd-async fly detector writing HDF5 assets
