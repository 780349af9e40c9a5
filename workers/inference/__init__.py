"""The inference worker pool: consume request topics, call providers, publish answers."""

from workers.inference.pool import InferencePool
from workers.inference.results import FinalResults, NoResultsOfRecord

__all__ = ["FinalResults", "InferencePool", "NoResultsOfRecord"]
