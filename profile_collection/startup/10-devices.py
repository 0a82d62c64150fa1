# Devices: the simulated bench by default ($ESPT_BENCH="SECCM:patterned:0" or [bench] in $ESPT_CONFIG).
bench = session.make_bench()
stage = bench.stage
pstat = bench.potentiostat
probe = bench.probe
afm = bench.afm
