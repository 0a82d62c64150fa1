"""Fly scanning with ophyd-async: trajectories, the simulated controller, and the stage/detector devices."""

from .controller import SimFlyController
from .devices import FlyDetector, FlyStage, make_fly_devices, trigger_info_for
from .trajectory import FlyRaster, HopSequence

__all__ = ["FlyRaster", "HopSequence", "SimFlyController", "FlyStage", "FlyDetector", "make_fly_devices",
           "trigger_info_for"]
