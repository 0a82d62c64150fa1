"""espt_bluesky: electrochemical scanning-probe techniques (SECM, SICM, SECCM, EC-AFM) on Bluesky.

Layers (imports go down only): physics -> analysis -> devices/ioc -> storage -> plans -> callbacks
-> correlate -> session/cli.  See DESIGN.md in the shared docs.
"""

__version__ = "0.1.0"
