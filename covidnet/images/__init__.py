"""One CT image from disk to the network's input: COVID-CT's official layout, splits and decoding
(covid_ct_layout) and its checked download (download), readers of other CT sets (sources/), the one
preprocessing path (preprocess, with the lung field of lungs), training augmentation (augment), seeded
choices of images (sampling).

May import: covidnet.core. Nothing above it: the folders' order is tests/test_layers.py LAYERS, which checks every
import.
"""
