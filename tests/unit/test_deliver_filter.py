"""The deliverer parses only the results that may call for a delivery (by their headers)."""

from __future__ import annotations

from collections.abc import Collection

from aiokafka import ConsumerRecord

from broker.kafka import result_headers
from broker.settings import KafkaSettings
from broker.webhooks.settings import WebhookSettings
from workers.deliver.service import Deliverer


class _Endpoints:
    """Stands in for `DeliveryStore.tenants_with_endpoints`."""

    def __init__(self, interested: set[str]):
        self.interested = interested
        self.asked: list[set[str]] = []

    async def tenants_with_endpoints(self, tenants: Collection[str]) -> set[str]:
        self.asked.append(set(tenants))
        return self.interested & set(tenants)


def _record(offset: int, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("sluice.results", 0, offset, 0, 0, b"req", b"{}", None, 1, 2,
                          tuple(headers))


async def test_only_labelled_webhooks_subscribed_tenants_and_unlabelled_are_decoded() -> None:
    deliverer = Deliverer(KafkaSettings(), WebhookSettings(), None, None)  # type: ignore[arg-type]
    endpoints = _Endpoints({"acme"})
    deliverer.store = endpoints  # type: ignore[assignment]
    records = [
        _record(0, result_headers("quiet", has_webhook=False)),  # nobody to tell: skipped
        _record(1, result_headers("quiet", has_webhook=True)),  # its own webhook URL
        _record(2, result_headers("acme", has_webhook=False)),  # tenant has an endpoint
        _record(3, []),  # an older worker's result, without labels
    ]
    wanted = await deliverer._worth_decoding(records)
    assert [record.offset for record in wanted] == [1, 2, 3]
    assert endpoints.asked == [{"quiet", "acme"}]
