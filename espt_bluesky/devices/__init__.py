"""Ophyd (v1) devices: stage, bipotentiostat, probes, EC-AFM head, and the simulated bench factory."""

from .afm import ECAFMHead
from .potentiostat import Bipotentiostat, SimBipotentiostat
from .probes import AFMCantilever, Nanopipette, Probe, UME
from .sim_bench import SimBench, make_sim_bench
from .stage import SimAxis, XYZStage

__all__ = ["AFMCantilever", "Bipotentiostat", "ECAFMHead", "Nanopipette", "Probe", "SimAxis", "SimBench",
           "SimBipotentiostat", "UME", "XYZStage", "make_sim_bench"]
