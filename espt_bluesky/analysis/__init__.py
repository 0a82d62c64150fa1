from .mechanics import HertzFit, ModulusMap, fit_force_curve, fit_hertz, modulus_map  # noqa: F401
from espt_bluesky.analysis.voltammetry import (  # noqa: F401
    CycleCharges, CyclePeaks, cycle_charges, onset_potential, passivation_ratio,
    peak_currents_and_potentials, split_cycles,
)
