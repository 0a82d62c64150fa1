# RunEngine and storage (Tiled writer subscribed), configured by $ESPT_CONFIG / $ESPT_DATA_DIR / $ESPT_TILED_URI.
from espt_bluesky.session import Session

session = Session.from_config()
RE = session.RE
catalog = session.catalog
