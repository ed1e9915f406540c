"""Numbers from predictions: test-set metrics and bootstrap intervals (stats), two arms compared with a
seed-aware verdict (arm_stats), the statistics of a scored image set per slice, infected slice and
patient (set_metrics), the one record per metric every table and training's logging read
(metric_registry), several models' P(COVID) averaged into one ensemble (ensembles).

May import: covidnet.core, covidnet.images. Nothing above it: the folders' order is tests/test_layers.py LAYERS,
which checks every import.
"""
