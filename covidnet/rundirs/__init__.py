"""What runs leave on disk: a run's and a sweep's directory (runs), each run file's one writer and reader
(run_files), one process per directory (run_lock), the checkpoint that stands for a run
(run_checkpoints), checkpoint writes a hard kill cannot half-finish (checkpoint_saving), evaluation
result directories (eval_lock), the resolvers that name Hydra's output folders (hydra_resolvers), a
training job's config record and DDP inside a multirun (hydra_jobs).

May import: covidnet.core, covidnet.images, covidnet.metrics, covidnet.models, covidnet.explain, covidnet.callbacks.
Nothing above it: the folders' order is tests/test_layers.py LAYERS, which checks every import.
"""
