"""Lightning callbacks of covidnet (configured in conf/callbacks/)."""

from callbacks.cam_logger import CamLogger

__all__ = ["CamLogger"]
