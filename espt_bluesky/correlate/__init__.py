"""Multimodal correlation: importers, coordinate frames, registration, footprint-aware resampling, joint analysis.

Modules (import what you need; nothing heavy is imported here):

``frames``        AffineTransform, transforms recorded on datasets, chains between frames
``importers``     instrument files -> xarray Datasets in µm (``read_file``), one module per family
``store``         imports and correlation products in Tiled (``import_file``, ``write_correlation_product``)
``registration``  fiducials (least squares + RANSAC), phase correlation, mutual information, feature matching
``resample``      footprint-aware resampling onto a common grid or onto spots, with uncertainty
``joint``         stacked channels, correlation with confidence intervals, 2-D histograms, clustering
``figures``       overlays with transparency, scale bars, matched colour limits
``regions``       polygons / thresholds on a registered map -> stage points for hopping_scan
``cli``           ``espt import``
"""
