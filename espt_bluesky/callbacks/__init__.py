from .live_map import LiveFeedbackMap  # noqa: F401
