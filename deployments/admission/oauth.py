"""POST /oauth/token: the OAuth 2.0 client-credentials grant (RFC 6749 §4.4), its client authentication
(§2.3.1: HTTP Basic or body parameters, never both) and its error responses (§5.2)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

__all__ = [
    "FORM_CONTENT_TYPE",
    "ClientCredentials",
    "OAuthError",
    "TokenReply",
    "granted_scope",
    "invalid_client",
    "parse_token_request",
    "token_reply",
]

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Token responses must not be cached (RFC 6749 §5.1).
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True)
class TokenReply:
    """What the token endpoint answers: status, JSON body, headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class OAuthError(Exception):
    """An RFC 6749 §5.2 error; invalid_client is 401 with a WWW-Authenticate challenge."""

    def __init__(self, error: str, description: str, status: int = 400, *, retry_after_s: int | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.retry_after_s = retry_after_s

    def reply(self) -> TokenReply:
        headers = dict(_NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="surge", error="invalid_client"'
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return TokenReply(self.status, {"error": self.error, "error_description": self.description}, headers)


def invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


@dataclass(frozen=True)
class ClientCredentials:
    """A well-formed client-credentials request, not yet authenticated."""

    client_id: str
    client_secret: str
    scope: str | None


def _form(content_type: str | None, body: bytes) -> dict[str, str]:
    if (content_type or "").split(";")[0].strip().lower() != FORM_CONTENT_TYPE:
        raise OAuthError("invalid_request", f"the request body must be {FORM_CONTENT_TYPE}")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", "the request body is not a valid form") from exc
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # §3.2: parameters must not be included more than once
        raise OAuthError("invalid_request", f"repeated parameters: {', '.join(repeated)}")
    return dict(pairs)


def _basic(authorization: str) -> tuple[str, str]:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client("client authentication must use HTTP Basic or the request body")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise invalid_client("the Basic credentials are not valid base64") from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise invalid_client("the Basic credentials must be client_id:client_secret")
    # §2.3.1: both are form-urlencoded before they are joined.
    return unquote_plus(client_id), unquote_plus(secret)


def _credentials(form: dict[str, str], authorization: str | None) -> tuple[str, str]:
    in_body = "client_id" in form or "client_secret" in form
    if authorization:
        if in_body and "client_secret" in form:  # §2.3: one authentication method per request
            raise OAuthError("invalid_request", "send the client credentials either by HTTP Basic or in the body")
        return _basic(authorization)
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id or not secret:
        raise invalid_client("client authentication is required: HTTP Basic or client_id and client_secret")
    return client_id, secret


def parse_token_request(content_type: str | None, authorization: str | None, body: bytes) -> ClientCredentials:
    """The credentials and scope of a client-credentials request, or the OAuthError to answer."""
    form = _form(content_type, body)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        message = f"grant_type {grant_type!r} is not supported; use client_credentials"
        raise OAuthError("unsupported_grant_type", message)
    client_id, secret = _credentials(form, authorization)
    return ClientCredentials(client_id, secret, form.get("scope"))


def granted_scope(requested: str | None, allowed: list[str]) -> str:
    """The scope to grant: the requested one when every part is allowed, every allowed scope when none asked."""
    if requested is None or not requested.strip():
        return " ".join(allowed)
    unknown = sorted(set(requested.split()) - set(allowed))
    if unknown:
        raise OAuthError("invalid_scope", f"unknown scope: {' '.join(unknown)}")
    return " ".join(sorted(set(requested.split())))


def token_reply(access_token: str, expires_in_s: int, scope: str) -> TokenReply:
    """The §5.1 success response."""
    body = {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in_s, "scope": scope}
    return TokenReply(200, body, dict(_NO_STORE))
