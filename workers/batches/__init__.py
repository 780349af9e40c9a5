"""The batch tracker: launches batches, follows their results, writes their files.

`BatchTracker` runs inside `sluice ledger`. `launcher` validates input files and publishes
lines to the batch lane; `results` records each line's final answer from `<prefix>results`;
`finalizer` cancels, expires and completes batches, writing output and error files.
"""

from workers.batches.service import BatchTracker

__all__ = ["BatchTracker"]
