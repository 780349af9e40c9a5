"""`sluice deliver`: signed webhooks (Standard Webhooks 1.0) for final results."""

from workers.deliver.service import Deliverer

__all__ = ["Deliverer"]
