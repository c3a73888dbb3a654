"""The token endpoint's request rules (RFC 6749 §4.4 client credentials, §2.3.1 client auth, §5.2 errors)."""

from __future__ import annotations

import base64

import pytest

from deployments.admission.oauth import FORM_CONTENT_TYPE, OAuthError, granted_scope, parse_token_request


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def error_of(content_type: str | None, authorization: str | None, body: bytes) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        parse_token_request(content_type, authorization, body)
    return caught.value


def test_body_credentials_are_accepted() -> None:
    request = parse_token_request(FORM_CONTENT_TYPE, None, b"grant_type=client_credentials&client_id=a&client_secret=b")
    assert (request.client_id, request.client_secret, request.scope) == ("a", "b", None)


def test_basic_credentials_are_form_decoded() -> None:
    request = parse_token_request(
        FORM_CONTENT_TYPE + "; charset=utf-8", basic("my%20client", "s%3Acret"), b"grant_type=client_credentials"
    )
    assert (request.client_id, request.client_secret) == ("my client", "s:cret")


def test_a_json_body_is_an_invalid_request() -> None:
    error = error_of("application/json", None, b'{"grant_type": "client_credentials"}')
    assert (error.error, error.status) == ("invalid_request", 400)


def test_a_missing_grant_type_is_an_invalid_request() -> None:
    assert error_of(FORM_CONTENT_TYPE, None, b"client_id=a&client_secret=b").error == "invalid_request"


def test_another_grant_type_is_unsupported() -> None:
    error = error_of(FORM_CONTENT_TYPE, None, b"grant_type=password&username=a&password=b")
    assert (error.error, error.status) == ("unsupported_grant_type", 400)


def test_a_repeated_parameter_is_an_invalid_request() -> None:
    body = b"grant_type=client_credentials&client_id=a&client_id=b&client_secret=c"
    assert error_of(FORM_CONTENT_TYPE, None, body).error == "invalid_request"


def test_two_authentication_methods_at_once_are_an_invalid_request() -> None:
    body = b"grant_type=client_credentials&client_id=a&client_secret=b"
    assert error_of(FORM_CONTENT_TYPE, basic("a", "b"), body).error == "invalid_request"


def test_no_client_authentication_is_invalid_client_with_a_challenge() -> None:
    error = error_of(FORM_CONTENT_TYPE, None, b"grant_type=client_credentials&client_id=a")
    reply = error.reply()
    assert (reply.status, reply.body["error"]) == (401, "invalid_client")
    assert reply.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert reply.headers["Cache-Control"] == "no-store"


def test_malformed_basic_credentials_are_invalid_client() -> None:
    assert error_of(FORM_CONTENT_TYPE, "Basic !!!", b"grant_type=client_credentials").status == 401
    no_colon = "Basic " + base64.b64encode(b"nocolon").decode()
    assert error_of(FORM_CONTENT_TYPE, no_colon, b"grant_type=client_credentials").error == "invalid_client"


def test_a_400_error_carries_no_challenge() -> None:
    reply = error_of(FORM_CONTENT_TYPE, None, b"grant_type=password").reply()
    assert "WWW-Authenticate" not in reply.headers
    assert set(reply.body) == {"error", "error_description"}


def test_no_requested_scope_grants_every_allowed_scope() -> None:
    assert granted_scope(None, ["inference", "batch"]) == "inference batch"


def test_an_unknown_scope_is_invalid_scope() -> None:
    with pytest.raises(OAuthError) as caught:
        granted_scope("inference admin", ["inference"])
    assert (caught.value.error, caught.value.status) == ("invalid_scope", 400)
