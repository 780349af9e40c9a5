"""The one exception tree of sluicegate. The HTTP edge alone maps these to status codes.

    SluiceError                      root; `retriable` says whether trying again may help
    ├── ConfigError                  the config file or settings are wrong (not retriable)
    ├── InvalidRequest               a client's request is malformed (not retriable)
    │   ├── UnknownModel             no such logical model is configured
    │   ├── PayloadTooLarge          the body is over the configured limit
    │   │   ├── MessageTooLarge      the request is over the Kafka brokers' message limit
    │   │   ├── FileTooLarge         an uploaded file is over the per-file limit
    │   │   └── StorageQuotaExceeded a tenant's files would exceed its storage quota
    │   └── WebhookUrlRefused        a webhook URL is not http(s) or not a global address
    ├── AuthenticationFailed         no, unknown or revoked API key (not retriable)
    ├── NotFound                     no such request (or not this tenant's)
    ├── AccessNotApproved            a model or template needs an approved access request
    ├── LimitExceeded                a key's rate limit or a monthly budget refused it
    ├── BrokerUnavailable            Kafka did not acknowledge in time (retriable)
    ├── DatabaseUnavailable          PostgreSQL could not be reached (retriable)
    ├── IssuerUnavailable            a JWT issuer's keys could not be fetched (retriable)
    ├── PoisonMessage                a Kafka message cannot be decoded or validated
    │   └── UnprovenRequest          a Kafka-native request without valid proof of its
    │                                sender, or asking more than the sender's key allows
    ├── StreamCancelled              the client left while its answer streamed (a worker
    │                                stops the provider call; never reaches a client)
    └── ProviderError                a provider call failed; `status_code` when HTTP
        ├── ProviderRetriable        429, 5xx, timeouts, connection errors
        └── ProviderRejected         400/401/403/404/422: the request itself is refused
            └── UnsupportedParameter the deployment's API cannot express a parameter
                                     (the worker tries the next deployment first)
"""

from __future__ import annotations

from collections.abc import Mapping


class SluiceError(Exception):
    """Root of every error sluicegate raises on purpose."""

    retriable: bool = False


class StreamCancelled(SluiceError):
    """The client went away (or cancelled) while its answer streamed."""


class ConfigError(SluiceError):
    """The configuration is invalid; the message names the bad key."""


class InvalidRequest(SluiceError):
    """A client's request is malformed; `param` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class UnknownModel(InvalidRequest):
    """The requested logical model is not configured."""

    def __init__(self, model: str):
        super().__init__(
            f"The model '{model}' does not exist; GET /v1/models lists the configured models.",
            param="model",
            code="model_not_found",
        )
        self.model = model


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than the configured limit."""

    def __init__(self, size: int, limit: int):
        super().__init__(
            f"Request body of {size} bytes is over the limit of {limit} bytes.",
            code="request_too_large",
        )


class MessageTooLarge(PayloadTooLarge):
    """A request is over the Kafka brokers' `message.max.bytes`: it can never be queued.

    Not retriable: the same request fails the same way every time (413 at the edge).
    """

    def __init__(self, size: int, limit: int):
        InvalidRequest.__init__(
            self,
            f"The request is {size} bytes once queued, over the Kafka brokers' limit of "
            f"{limit} bytes (message.max.bytes). Send a shorter prompt, or raise "
            "message.max.bytes on the brokers (SLUICE_MAX_MESSAGE_BYTES follows them).",
            code="request_too_large",
        )
        self.size = size
        self.limit = limit


class FileTooLarge(PayloadTooLarge):
    """An uploaded file is over the per-file limit; refused as soon as the limit is crossed."""

    def __init__(self, limit: int):
        InvalidRequest.__init__(
            self,
            f"The file is over the limit of {limit} bytes per file "
            "(SLUICE_BATCH_MAX_FILE_BYTES); split it into several files.",
            code="file_too_large",
        )
        self.limit = limit


class StorageQuotaExceeded(PayloadTooLarge):
    """A tenant's stored files would exceed its quota (413, not 429: waiting frees nothing,
    and clients retry a 429 on their own)."""

    def __init__(self, used: int, quota: int):
        InvalidRequest.__init__(
            self,
            f"This upload does not fit in your file storage quota of {quota} bytes "
            f"(SLUICE_MAX_FILE_STORAGE_BYTES_PER_TENANT); your files already use {used} "
            "bytes. Delete files you no longer need (DELETE /v1/files/{file_id}, batch "
            "output and error files included) and upload again.",
            code="storage_quota_exceeded",
        )
        self.used = used
        self.quota = quota


class WebhookUrlRefused(InvalidRequest):
    """A webhook URL we will not call: not http(s), unresolvable, or not a global address.

    Not retriable at ingress (400); the deliverer ends such a delivery `failed` at once.
    """

    def __init__(self, message: str):
        super().__init__(message, param="X-Webhook-URL", code="webhook_url_refused")


class AuthenticationFailed(SluiceError):
    """No API key, or one that is unknown or revoked."""


class NotFound(SluiceError):
    """The thing asked for does not exist, or belongs to another tenant."""


class AccessNotApproved(SluiceError):
    """The caller has no approved access to a resource that requires approval (403).

    `code` is `access_required` (never requested), `access_pending` or `access_denied`.
    """

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.code = code


class LimitExceeded(SluiceError):
    """A key's RPM/TPM or a tenant's or key's monthly budget refused a request (429).

    Attributes:
        code: OpenAI's code: `rate_limit_exceeded` (RPM/TPM) or `insufficient_quota`.
        retry_after_s: When trying again may succeed; None when it never will as asked.
    """

    retriable = True

    def __init__(self, message: str, *, code: str, retry_after_s: float | None):
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class BrokerUnavailable(SluiceError):
    """Kafka did not acknowledge in time; nothing was accepted."""

    retriable = True


class DatabaseUnavailable(SluiceError):
    """PostgreSQL could not be reached."""

    retriable = True


class IssuerUnavailable(SluiceError):
    """A token's issuer could not be asked for its signing keys, so the token could be
    neither accepted nor refused (503). Retriable: the same token may pass once the issuer
    answers; `retry_after_s` is when we will ask the issuer again."""

    retriable = True

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PoisonMessage(SluiceError):
    """A Kafka message that can never be processed; it belongs in the dead-letter topic."""


class UnprovenRequest(PoisonMessage):
    """A request on a request topic that does not prove who sent it, or that asks for more
    than the sender's key allows (another tenant, model or reply topic). Not retriable: it
    goes to the dead letters, with this message as the reason."""


class ProviderError(SluiceError):
    """A provider call failed."""

    def __init__(self, message: str, *, status_code: int | None = None, deployment: str = ""):
        super().__init__(message)
        self.status_code = status_code
        self.deployment = deployment


class ProviderRetriable(ProviderError):
    """Trying again (later, or elsewhere) may succeed: 429, 5xx, timeouts, connection errors."""

    retriable = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        deployment: str = "",
        retry_after_s: float | None = None,
        rate_limit_headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message, status_code=status_code, deployment=deployment)
        self.retry_after_s = retry_after_s
        # A 429 announces the limits and resets too: the budgets learn from them.
        self.rate_limit_headers: Mapping[str, str] = rate_limit_headers or {}


class ProviderRejected(ProviderError):
    """The provider refused the request itself; failing over would not help."""


class UnsupportedParameter(ProviderRejected):
    """The deployment's API cannot express a parameter of the request (Anthropic has no `n`,
    Gemini no `logit_bias`). Raised by an adapter before it calls anyone: the worker tries
    the request's next deployment, and answers 400 naming `param` only if none can take it.
    """

    def __init__(self, message: str, *, param: str, deployment: str = ""):
        super().__init__(message, status_code=400, deployment=deployment)
        self.param = param
