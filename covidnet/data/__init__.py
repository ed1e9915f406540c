"""What a run trains and is tested on: the Lightning data module (datamodule) and its image cache
(image_cache), the share of the training split and the other sources (training_sources, multisource), the
named image sets of conf/eval/ (sets), near-duplicate images within and across the splits
(near_duplicates).

May import: covidnet.core, covidnet.images, covidnet.metrics, covidnet.models, covidnet.explain, covidnet.callbacks,
covidnet.rundirs. Nothing above it: the folders' order is tests/test_layers.py LAYERS, which checks every import.
"""
