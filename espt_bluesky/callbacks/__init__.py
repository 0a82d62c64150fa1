from .live_map import LiveFeedbackMap  # noqa: F401
from .approach_fit import ApproachFitCallback  # noqa: F401
from .products import ProductCallback, write_kinetic_map, write_modulus_map, write_screening  # noqa: F401
