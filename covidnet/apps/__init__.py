"""The command-line apps and what starts them: one ``main`` per app wired to Hydra (cli), training
(train), trained checkpoints on other image sets (evaluate), CAM figures and numbers (visualize),
the Hydra callbacks of a launch (hydra_callbacks). The sweep report (covidnet.report) shares this
top layer.

May import: covidnet.core, covidnet.images, covidnet.metrics, covidnet.models, covidnet.explain, covidnet.callbacks,
covidnet.rundirs, covidnet.data, covidnet.trained; covidnet.report shares its layer. Nothing above it: the folders'
order is tests/test_layers.py LAYERS, which checks every import.
"""
