"""The tiny training configuration the tests train with (32 px, one epoch, CPU, no progress bar), composed from
conf/ as train.py composes it: one definition for every test that trains, so a change of the tiny settings
reaches all of them."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from covidnet.models.inits import apply_arch_defaults

CONF = Path(__file__).resolve().parents[1] / "conf"
# Tiny settings: 32 px, one epoch, no progress bar.
TINY = [
    "data.image_size=32",
    "data.batch_size=8",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "++callbacks.cam=null",  # CAM images have their own tests
]


def compose_cfg(overrides: list[str]):
    """The train config as train() builds the run from it (the architecture's normalisation filled in)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return apply_arch_defaults(compose(config_name="train", overrides=overrides))


def tiny_cfg(data_root: Path, out: Path, *extra: str):
    return compose_cfg([f"data.root={data_root}", f"paths.output_dir={out}", *TINY, *extra])
