"""The realtime WebSocket transport: endpoints and API keys, connection problems, the transport."""

from app.realtime.endpoint import (
    API_KEY_ENV,
    KEYRING_SERVICE,
    KEYRING_USERNAME,
    ApiKeyLookup,
    Endpoint,
    EndpointKind,
    KeyStoreError,
    azure_endpoint,
    custom_endpoint,
    endpoint_from_url,
    lookup_api_key,
    openai_endpoint,
    redact_url,
    resolve_api_key,
    store_api_key,
)
from app.realtime.errors import ConnectionProblem, ProblemKind, classify
from app.realtime.transport import USER_AGENT, BackoffPolicy, RealtimeTransport, TransportHandler

__all__ = [
    "API_KEY_ENV",
    "KEYRING_SERVICE",
    "KEYRING_USERNAME",
    "USER_AGENT",
    "ApiKeyLookup",
    "BackoffPolicy",
    "ConnectionProblem",
    "Endpoint",
    "EndpointKind",
    "KeyStoreError",
    "ProblemKind",
    "RealtimeTransport",
    "TransportHandler",
    "azure_endpoint",
    "classify",
    "custom_endpoint",
    "endpoint_from_url",
    "lookup_api_key",
    "openai_endpoint",
    "redact_url",
    "resolve_api_key",
    "store_api_key",
]
