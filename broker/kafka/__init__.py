"""The Kafka port: the only package that imports aiokafka (an import-linter contract).

Everything else talks to Kafka through what this package exports:
- clients: `new_producer`, `new_consumer` (explicit commits only) and the types they
  return (`Producer`, `Consumer`, `ConsumerRecord`, `TopicPartition`, `RebalanceListener`);
- admin: `ensure_topics`, `partition_ids`, `delete_topics`, `describe_brokers`,
  `with_broker_limits`;
- codecs and helpers: `encode`, `decode`, `header`, `read_present`, dead letters, the
  size contract (`message_limit`, `fits`, `is_too_large`);
- errors: `KafkaError` and the few kinds callers tell apart.

A bootstrap address `memory://<name>` selects the in-memory implementation
(`broker.kafka.memory`), so unit tests drive ingress, the worker pool and the ledger with
no broker at all; the same contract tests run against it, Apache Kafka and Tansu.
"""

from aiokafka import AIOKafkaConsumer as Consumer
from aiokafka import AIOKafkaProducer as Producer
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener as RebalanceListener
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from broker.kafka.apply_loop import (
    TRANSIENT_ERRORS,
    ApplyLoop,
    Record,
    commit_positions,
    first_offsets,
    flatten,
    rewind,
    short_reason,
)
from broker.kafka.clients import (
    DEFAULT_MESSAGE_MAX_BYTES,
    DLQ_AT,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    RESULT_TENANT_HEADER,
    RESULT_WEBHOOK_HEADER,
    BrokerFacts,
    Headers,
    decode,
    delete_topics,
    describe_brokers,
    encode,
    ensure_topics,
    fits,
    header,
    is_too_large,
    message_limit,
    new_consumer,
    new_producer,
    partition_ids,
    read_present,
    result_headers,
    send_to_dead_letter,
    topics_for,
    wait_all,
    with_broker_limits,
)
from broker.kafka.topic_configs import cancels_topic_configs

__all__ = [
    "DEFAULT_MESSAGE_MAX_BYTES",
    "DLQ_AT",
    "DLQ_OFFSET",
    "DLQ_PARTITION",
    "DLQ_REASON",
    "DLQ_TOPIC",
    "RESULT_TENANT_HEADER",
    "RESULT_WEBHOOK_HEADER",
    "TRANSIENT_ERRORS",
    "ApplyLoop",
    "BrokerFacts",
    "Consumer",
    "ConsumerRecord",
    "Headers",
    "KafkaError",
    "Producer",
    "RebalanceListener",
    "Record",
    "TopicPartition",
    "UnknownTopicOrPartitionError",
    "cancels_topic_configs",
    "commit_positions",
    "decode",
    "delete_topics",
    "describe_brokers",
    "encode",
    "ensure_topics",
    "first_offsets",
    "fits",
    "flatten",
    "header",
    "is_too_large",
    "message_limit",
    "new_consumer",
    "new_producer",
    "partition_ids",
    "read_present",
    "result_headers",
    "rewind",
    "send_to_dead_letter",
    "short_reason",
    "topics_for",
    "wait_all",
    "with_broker_limits",
]
