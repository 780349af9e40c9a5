"""Admission of Kafka-native requests: the limits ingress applies, applied by the worker.

A request published through ingress was admitted there (key RPM/TPM, the key's and the
tenant's monthly budgets, the tenant's queue cap). A Kafka-native request signed by an API
key (`workers.inference.provenance`) never passed that door, so the worker admits it with
the same `AdmissionControl`, the same estimate and the same shared state before any
provider call. A refusal ends the request `failed` with the error ingress would have
answered (`rate_limit_exceeded`, `insufficient_quota`, `queue_full`, and the access
approval codes `access_required`, `access_pending`, `access_denied`); nothing is called
and nothing is billed. Requests our services signed, and unsigned ones on a cluster that
trusts them, are not admitted again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from broker.admission import AdmissionControl, KeyCaller
from broker.errors import AccessNotApproved, DatabaseUnavailable, LimitExceeded
from broker.kafka import Record, header
from broker.signing import KEY_ID_HEADER, SERVICE_SIGNER
from schemas import ErrorInfo, InferenceRequest
from workers.inference.provenance import RequestProvenance

log = logging.getLogger("sluice.worker")


class NativeAdmission:
    """Admits key-signed requests; says why not (an `ErrorInfo`) or None.

    Args:
        admission: The admission ingress uses, on the same PostgreSQL.
        provenance: Where the signing keys were looked up (cached).
        patience_s: How long to wait for PostgreSQL before refusing (fail closed).
    """

    def __init__(self, admission: AdmissionControl, provenance: RequestProvenance, *,
                 patience_s: float = 30.0) -> None:
        self._admission = admission
        self._provenance = provenance
        self._patience_s = patience_s

    async def refusal(self, record: Record, request: InferenceRequest) -> ErrorInfo | None:
        """Why `request` may not run now (None: admitted, or not ours to admit)."""
        signer = header(record, KEY_ID_HEADER)
        if signer is None or signer == SERVICE_SIGNER:
            return None
        key = await self._provenance.key(signer)
        if key is None:  # revoked since it was verified a moment ago
            return ErrorInfo(type="invalid_request_error", code="invalid_api_key",
                             message=f"API key '{signer}' is revoked or expired.")
        deadline = time.monotonic() + self._patience_s
        delay = 0.5
        while True:
            try:
                # A model that requires approval (README "Access approval") first.
                await self._admission.require_access(KeyCaller.of(key), request)
                await self._admission.admit(KeyCaller.of(key), request)
                return None
            except AccessNotApproved as exc:
                return ErrorInfo(type="permission_denied", code=exc.code, message=str(exc))
            except LimitExceeded as exc:
                kind = "insufficient_quota" if exc.code == "insufficient_quota" else "requests"
                return ErrorInfo(type=kind, code=exc.code, message=str(exc))
            except DatabaseUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    return ErrorInfo(
                        type="service_unavailable", code="admission_unavailable",
                        message="The limits of this request could not be checked (the "
                                "database is unavailable); send it again later.")
                log.warning("admission unavailable (%s); asking again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
