# Plans.
import bluesky.plans as bp
import bluesky.plan_stubs as bps
from bluesky.callbacks.best_effort import BestEffortCallback

from espt_bluesky.plans import *  # noqa: F401,F403
from espt_bluesky.storage import read_map, write_product

# TODO: import the espt plans by name once espt_bluesky.plans exports them (hopping_scan, approach, ...).
bec = BestEffortCallback()
bec.disable_plots()
RE.subscribe(bec)
