"""The networks and their weights: reading weight files safely (weights_io), the init registry (inits) and
the weights it loads (ct_weights, lite_weights), the architectures and freeze modes (backbones),
BatchNorm statistics for frozen layers (bn_calibration), the LightningModule (model) with its schedule
and checkpoint rule (training_recipe), P(COVID) of a trained model (predict), the architecture registry:
weights, normalisation, CAM layers by stride (archs), the test loop's predictions kept in split order
(test_predictions).

May import: covidnet.core, covidnet.images, covidnet.metrics. Nothing above it: the folders' order is
tests/test_layers.py LAYERS, which checks every import.
"""
