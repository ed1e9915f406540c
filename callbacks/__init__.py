"""Lightning callbacks of covidnet (configured in conf/callbacks/)."""

from callbacks.cam_logger import CamLogger
from callbacks.frozen_features import FrozenFeatureCache

__all__ = ["CamLogger", "FrozenFeatureCache"]
