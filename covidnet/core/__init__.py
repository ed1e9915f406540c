"""Plumbing every other layer uses, with no knowledge of images, models or runs: the one base class of
mistakes a user can fix (errors), whole-file writes and what killed writers left (atomic, processes),
writable folders checked before work (write_check), the option-rule engine (options), where the Hydra
configs are (configs), epoch timing (timing), precision, memory format and threads for the machine
(hardware).

May import: nothing else of covidnet. Nothing above it: the folders' order is tests/test_layers.py LAYERS, which
checks every import.
"""
