# Plans.
import bluesky.plans as bp
import bluesky.plan_stubs as bps
from bluesky.callbacks.best_effort import BestEffortCallback

from espt_bluesky.plans import (approach, combinatorial_sweep, constant_height_image, hopping_scan,  # noqa: F401
                                measure_tilt, operando_imaging, sgtc)
from espt_bluesky.storage import read_map, write_product  # noqa: F401

bec = BestEffortCallback()
bec.disable_plots()
RE.subscribe(bec)
