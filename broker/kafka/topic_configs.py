"""Topic configs: what sluicegate sets on its topics, and setting them on existing ones.

`ensure_topics` (`broker.kafka.clients`) gives created topics their configs at creation;
a topic that already exists is aligned here, keeping whatever else an operator set on it.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaError,
    UnsupportedVersionError,
    for_code,
)

from broker.settings import KafkaSettings

log = logging.getLogger("sluice.kafka")


def cancels_topic_configs(settings: KafkaSettings) -> dict[str, str]:
    """The cancels topic's configs: Kafka deletes markers once no request can need them
    (`cancel_lookback_s`, above the longest lane deadline)."""
    return {"cleanup.policy": "delete",
            "retention.ms": str(int(settings.cancel_lookback_s * 1000))}



# DescribeConfigs v1+ says where a value comes from; this one is set on the topic itself.
_DYNAMIC_TOPIC_CONFIG = 1


async def _topic_overrides(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    """The configs set on `topic` itself (not inherited from the brokers' defaults)."""
    # Every config, not just ours: Tansu cannot answer a request naming keys (see
    # `_broker_facts`).
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    overrides: dict[str, str] = {}
    for response in responses:
        for code, message, _type, _name, entries in response.resources:
            if code != 0:
                raise for_code(code)(message)
            for name, value, _read_only, source, *_ in entries:
                # v0 has `is_default` where later versions have the source.
                own = (not source if response.API_VERSION == 0
                       else source == _DYNAMIC_TOPIC_CONFIG)
                if own and value is not None:
                    overrides[name] = value
    return overrides


async def align_topic_configs(
    admin: AIOKafkaAdminClient, topic: str, configs: dict[str, str]
) -> None:
    """Give an existing topic `configs`, keeping the rest of its own configs."""
    try:
        current = await _topic_overrides(admin, topic)
        if all(current.get(name) == value for name, value in configs.items()):
            return
        # AlterConfigs (the only kind aiokafka sends) replaces every config set on the
        # topic: send those we keep along with ours, or they fall back to the defaults.
        responses = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {**current, **configs})])
        for response in responses:
            for code, message, *_ in response.resources:
                if code != 0:
                    raise for_code(code)(message)
    except (IncompatibleBrokerVersion, UnsupportedVersionError) as exc:
        # The embedded Tansu broker has no AlterConfigs (nor topic configs to describe).
        log.info("Kafka cannot alter topic configs (%s); topic %s keeps its own", exc, topic)
        return
    except KafkaError as exc:
        log.warning("could not set %s on topic %s (%s); it keeps its configs", configs, topic,
                    exc)
        return
    log.info("topic %s: set %s (were %s)", topic,
             ", ".join(f"{name}={value}" for name, value in sorted(configs.items())),
             ", ".join(f"{name}={current.get(name, 'default')}" for name in sorted(configs)))
