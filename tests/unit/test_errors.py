import pickle

from ray import exceptions as ray_exc
from ray.serve.exceptions import BackPressureError

from deployments.errors import ContextLengthExceeded, ModelNotFound, SurgeError
from deployments.failures import as_surge_error, validation_error


def test_error_body_has_openai_shape() -> None:
    err = ModelNotFound("no such model", param="model")
    assert err.status == 404
    assert err.body() == {
        "error": {"message": "no such model", "type": "invalid_request_error", "param": "model",
                  "code": "model_not_found"}
    }


def test_errors_survive_pickling_with_their_fields() -> None:
    err = ContextLengthExceeded("too long", param="messages", headers={"X": "1"})
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is ContextLengthExceeded
    assert (copy.status, copy.param, copy.headers) == (413, "messages", {"X": "1"})
    assert copy.code == "context_length_exceeded"


def test_ray_task_error_is_unwrapped_to_its_cause() -> None:
    cause = ContextLengthExceeded("too long")
    wrapped = ray_exc.RayTaskError("generate", "traceback", cause)
    assert as_surge_error(wrapped) is cause


def test_backpressure_becomes_503_with_retry_after() -> None:
    err = as_surge_error(BackPressureError(num_queued_requests=5, max_queued_requests=5))
    assert err.status == 503 and err.headers["Retry-After"]


def test_unknown_failure_is_a_500_without_details() -> None:
    err = as_surge_error(RuntimeError("secret internals"))
    assert type(err) is SurgeError and err.status == 500
    assert "secret" not in err.message


def test_invalid_json_is_a_400() -> None:
    err = validation_error([{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error"}])
    assert err.status == 400 and err.code == "invalid_json"


def test_validation_error_names_the_parameter() -> None:
    err = validation_error([{"type": "greater_than_equal", "loc": ("body", "max_tokens"), "msg": "x"}])
    assert err.param == "max_tokens" and err.status == 400


def test_missing_field_is_named() -> None:
    err = validation_error([{"type": "missing", "loc": ("body", "messages"), "msg": "Field required"}])
    assert err.code == "missing_required_parameter" and "messages" in err.message
