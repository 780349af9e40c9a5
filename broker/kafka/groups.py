"""Whether Kafka answers, and whether a process's consumer is in its group (readiness).

The ledger and the deliverer read through `ApplyLoop`, which owns its consumer; from
outside, the group coordinator is the witness that the consumer joined: the group is
`Stable` (no rebalance under way) and one of its members carries the process's own
client id (so each process passes a client id of its own, e.g. with its host name).
"""

from __future__ import annotations

from typing import Any

from aiokafka.errors import KafkaError

from broker.errors import BrokerUnavailable
from broker.kafka.clients import _admin, describe_brokers
from broker.kafka.memory import is_memory, memory_broker
from broker.settings import KafkaSettings


async def ping_kafka(settings: KafkaSettings) -> None:
    """Ask the cluster to describe itself.

    Raises:
        BrokerUnavailable: no broker answers (or the login is refused).
    """
    await describe_brokers(settings)


async def group_membership(settings: KafkaSettings, group_id: str, client_id: str) -> str | None:
    """None when `client_id` is a member of the stable group `group_id`; else why not.

    Raises:
        BrokerUnavailable: Kafka cannot be reached.
    """
    if is_memory(settings.kafka_bootstrap):  # the in-process fake: its own bookkeeping
        group = memory_broker(settings.kafka_bootstrap).groups.get(group_id)
        joined = group is not None and any(member.joined for member in group.members)
        return None if joined else f"consumer group {group_id} has no member yet"
    admin = await _admin(settings)
    try:
        responses = await admin.describe_consumer_groups([group_id])
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"cannot describe consumer group {group_id}: {exc}") from exc
    finally:
        await admin.close()
    return _verdict(group_id, client_id, responses)


def _verdict(group_id: str, client_id: str, responses: list[Any]) -> str | None:
    for response in responses:
        for group in response.to_object()["groups"]:
            if group["group"] != group_id:
                continue
            if group["error_code"]:
                return f"consumer group {group_id}: error code {group['error_code']}"
            if not any(_is_ours(member, client_id) for member in group["members"]):
                return f"this process ({client_id}) is not a member of {group_id} yet"
            if group["state"] != "Stable":
                return f"consumer group {group_id} is {group['state']}, not Stable"
            return None
    return f"consumer group {group_id} is unknown to Kafka"


def _is_ours(member: dict[str, Any], client_id: str) -> bool:
    # Brokers name members `<client id>-<uuid>`; some (Tansu) leave `client_id` empty.
    return bool(member["client_id"] == client_id
                or member["member_id"].startswith(f"{client_id}-"))
