from .mechanics import HertzFit, ModulusMap, fit_force_curve, fit_hertz, modulus_map  # noqa: F401
from espt_bluesky.analysis.voltammetry import (  # noqa: F401
    CycleCharges, CyclePeaks, cycle_charges, onset_potential, passivation_ratio,
    peak_currents_and_potentials, split_cycles,
)
from .screening import (  # noqa: F401
    ClusterResult, GroupStatistics, ScreeningResult, SpotFeatures, cluster_spots, group_statistics,
    screen_spots, spot_features,
)
from .kinetic_maps import KineticMap, classify_kappa, kinetic_map, tilt_corrected_distance  # noqa: F401
from .resolution import (  # noqa: F401
    EdgeFit, deconvolve_image, disc_edge, fit_edge, footprint_psf, line_profile, radial_profile, richardson_lucy,
)
from .approach_fit import ApproachFitResult, fit_approach_curve, kappa_from_current  # noqa: F401
from .ec_afm import ForceMap, HeightChange, force_map, height_change  # noqa: F401
from .topography import DeformationResult, LevelResult, deformation_rate, level, register_shift  # noqa: F401
