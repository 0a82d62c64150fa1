"""caproto IOCs that serve the simulated bench over EPICS Channel Access.

* :mod:`.bench_ioc` — the PV groups (motor records for the stage, the potentiostat) over a ``BenchModel``.
* :mod:`.cli` — ``espt ioc ...`` / ``python -m espt_bluesky.ioc``.
* :mod:`.launch` — start IOCs as child processes on loopback with a consistent CA environment (tests, benchmarks,
  demos).

The PV list a vendor IOC must implement is in ``docs/epics_pv_list.md``.
"""
