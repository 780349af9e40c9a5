"""Shadow traffic: the copy of a request that goes to a candidate deployment, unseen.

Which requests are mirrored is fixed by their id (a hash, like sticky variants), so a
request published twice is mirrored both times or neither. The copy:

- takes the model's batch lane (it uses only spare budget and never delays callers);
- runs under the internal tenant of `shadow.account`, with no API key: its usage is billed
  there, never to the caller's tenant or key;
- has no reply topic, correlation id or webhook, so nothing ever delivers its answer;
- carries `shadow_of` (the original's id) and the variant `shadow`; its id is derived from
  the original's, so both ledger rows join on `requests.shadow_of`.
"""

from __future__ import annotations

from datetime import datetime

from broker.routing.policy import RoutingPolicy
from broker.routing.sticky import SHADOW, unit_hash
from schemas import ChatCompletionRequest, InferenceRequest, Lane

SHADOW_ID_PREFIX = "shadow_"


def shadow_copy(policy: RoutingPolicy, request: InferenceRequest,
                now: datetime) -> InferenceRequest | None:
    """The shadow copy of `request`, or None when it is not one of the mirrored share."""
    shadow = policy.shadow
    if shadow is None or request.shadow_of is not None or shadow.percent <= 0:
        return None
    if unit_hash(SHADOW, request.model, request.id) * 100 >= shadow.percent:
        return None
    body = request.body
    if isinstance(body, ChatCompletionRequest) and body.stream:
        # Nobody reads a shadow's chunks: ask for the whole answer.
        body = body.model_copy(update={"stream": None, "stream_options": None})
    return InferenceRequest(
        id=f"{SHADOW_ID_PREFIX}{request.id}"[:200],
        model=request.model,
        body=body,
        tenant=shadow.account,
        api_key_id=None,
        lane=Lane.BATCH,
        created_at=now,
        requested_model=request.requested_model,
        variant=SHADOW,
        shadow_of=request.id,
        # The caller's key's policies too: the copy's prompt leaves to a provider as well.
        guardrails=request.guardrails,
    )
