"""Services fed by the document bus (NATS JetStream): see docs/bus.md.

bus
    :class:`~.bus.BusConfig` (the ``[bus]`` section), the wire format, the stream and its limits.
publisher
    :class:`~.publisher.BusPublisher`: the RunEngine's subscriber (pack, hand to its publishing process
    :mod:`.publisher_child`; the local journal when the bus fails).
consumer
    :class:`~.consumer.DurableWorker`: fetch, handle, acknowledge after commit.
tiled_worker / analysis_worker / livemap
    ``espt worker tiled``, ``espt worker analysis``, ``espt worker livemap``.
"""
