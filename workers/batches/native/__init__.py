"""The native batch lane: batch lines of `batch: native` deployments go to the provider's
own batch API (OpenAI `/v1/batches`, Anthropic Message Batches) at its batch price.

`NativeLane` (in `lane`) is driven by the batch tracker; `native_upstreams` builds the
clients (`openai_batches`, `anthropic_batches`) at the composition root; `answers` maps
upstream results to our results and usage events; `store` is its SQL.
"""

from workers.batches.native.factory import native_upstreams
from workers.batches.native.lane import NativeLane, native_routes
from workers.batches.native.upstream import BatchUpstream

__all__ = ["BatchUpstream", "NativeLane", "native_routes", "native_upstreams"]
