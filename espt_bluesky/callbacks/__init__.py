from .live_map import LiveFeedbackMap  # noqa: F401
from .approach_fit import ApproachFitCallback  # noqa: F401
