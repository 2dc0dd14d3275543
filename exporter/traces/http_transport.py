"""OTLP over HTTP/protobuf: an httpx POST of the encoded body, with the SDK's retry rule."""

from __future__ import annotations

import gzip
import ssl

import httpx

from exporter.traces.transport import ACCEPTED, USER_AGENT, Outcome, TransportOptions, with_retries

_RETRY_HTTP = frozenset({408, 429, 502, 503, 504})
_NOT_ABOUT_CONTENT = frozenset({401, 403, 404, 407})


class HttpTransport:
    """POSTs the request body to the endpoint with a synchronous httpx client (pooled)."""

    def __init__(self, options: TransportOptions) -> None:
        self._options = options
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT}
        headers.update(options.headers)
        if options.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        self._client = httpx.Client(
            headers=headers, verify=http_tls_context(options), timeout=options.timeout, follow_redirects=False
        )

    def send(self, body: bytes) -> Outcome:
        if self._options.compression == "gzip":
            body = gzip.compress(body, compresslevel=6)
        return with_retries(lambda seconds_left: self._post(body, seconds_left), self._options.timeout)

    def close(self) -> None:
        self._client.close()

    def _post(self, body: bytes, seconds_left: float) -> Outcome:
        try:
            response = self._client.post(self._options.endpoint, content=body, timeout=seconds_left)
        except httpx.TimeoutException:
            return Outcome("unavailable", f"no answer within {self._options.timeout:g} s")
        except httpx.HTTPError as error:
            return Outcome("unavailable", type(error).__name__, retryable=True)
        return http_outcome(response.status_code)


def http_outcome(code: int) -> Outcome:
    if 200 <= code < 300:
        return ACCEPTED
    detail = f"HTTP {code}"
    if code in _RETRY_HTTP:
        return Outcome("unavailable", detail, retryable=True)
    if 400 <= code < 500 and code not in _NOT_ABOUT_CONTENT:
        return Outcome("rejected", detail)
    return Outcome("unavailable", detail)


def http_tls_context(options: TransportOptions) -> ssl.SSLContext:
    context = httpx.create_ssl_context()
    if options.certificate is not None:
        context.load_verify_locations(cafile=options.certificate)
    if options.client_certificate is not None:
        context.load_cert_chain(options.client_certificate, options.client_key)
    return context
