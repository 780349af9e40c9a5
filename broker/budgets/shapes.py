"""A deployment's bucket shape from its configured budget.

Here, beside the buckets, so that whoever reads the shared budget state (the workers'
gates, the console's gauges) sizes the buckets the same way.
"""

from __future__ import annotations

from broker.budgets.algorithm import BucketShape
from broker.config import DeploymentConfig


def shape_of(config: DeploymentConfig) -> BucketShape:
    """A deployment's bucket shape, from its configured budget."""
    limits = (config.rpm, config.tpm, config.input_tpm, config.output_tpm)
    return BucketShape(
        limits=(float(limits[0] or 0), float(limits[1] or 0), float(limits[2] or 0),
                float(limits[3] or 0)),
        window_s=config.window_s,
        burst=config.burst,
        # Calls reach the provider a little later than they were reserved, and not all
        # equally late (event loops, a busy host): 1 % of the window absorbs that.
        guard_s=max(0.02, 0.01 * config.window_s),
        max_concurrency=config.max_concurrency or 0,
        # A reservation never settled (its worker crashed) stops counting as in flight
        # once its call would have timed out anyway.
        lease_s=config.timeout_s + 5.0,
    )
