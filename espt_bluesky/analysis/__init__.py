from .mechanics import HertzFit, ModulusMap, fit_force_curve, fit_hertz, modulus_map  # noqa: F401
