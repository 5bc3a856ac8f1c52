"""A bundled imin-Firehose-like RPDE publisher with generated data, for demos and tests."""

from __future__ import annotations

from harvester.sample.dataset import FEED_NAMES, Dataset
from harvester.sample.server import Fault, SamplePublisher

__all__ = ["FEED_NAMES", "Dataset", "Fault", "SamplePublisher"]
