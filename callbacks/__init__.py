"""Lightning callbacks of covidnet (configured in conf/callbacks/), imported as ``covidnet.callbacks``.

This file is that package's ``__init__`` in a built wheel; in a checkout covidnet/callbacks.py plays its
part. Keep the two export lists equal (tests/test_packaging.py checks).
"""

from covidnet.callbacks.cam_logger import CamLogger
from covidnet.callbacks.ema import EMA
from covidnet.callbacks.frozen_features import FrozenFeatureCache

__all__ = ["CamLogger", "EMA", "FrozenFeatureCache"]
