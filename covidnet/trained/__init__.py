"""Trained runs read back: the one checkpoint check and a classifier rebuilt from its checkpoint
(checkpoint), what a resume checks (resume), an image set scored by a checkpoint (set_scoring), runs'
evaluations on external sets summarised per group (external_summary), in-memory models scored on sets
with ensembles (evaluation), CAM figures and numbers of checkpoints (visualization).

May import: covidnet.core, covidnet.images, covidnet.metrics, covidnet.models, covidnet.explain, covidnet.callbacks,
covidnet.rundirs, covidnet.data. Nothing above it: the folders' order is tests/test_layers.py LAYERS, which checks
every import.
"""
