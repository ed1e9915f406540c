"""Class activation maps of the one-logit classifier: GradCAM and EigenCAM (cam), what a map shows:
faithfulness, lung-field share, lesion localisation (cam_metrics), a model's CAM numbers on a list of
images (cam_scores), the CAM figure (cam_figure).

May import: covidnet.core, covidnet.images, covidnet.metrics, covidnet.models. Nothing above it: the folders' order
is tests/test_layers.py LAYERS, which checks every import.
"""
