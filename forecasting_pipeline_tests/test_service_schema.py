"""The contract is the schema: schemathesis generates requests for every operation of the service's own
``/openapi.json`` and checks every answer against it (status, content type, body, headers, and whether data
that fits the schema is accepted and data that does not is refused), over real HTTP on loopback against the
production-default service (conftest.py). Generation is derandomized, so every run sends the same cases.

Data that fits the schema may still be refused by the domain: an unknown symbol (422, on the reads as on the
predictions), an ad-hoc series of fewer than 64 valid bars (422), a run's batch that is not a valid
``.npz`` (400). Those answers are documented, so they count as accepted; a 5xx or an undocumented answer fails.
"""

from __future__ import annotations

import hypothesis
import hypothesis.errors
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from forecasting_pipeline.forecasting.batch_wire import MEDIA_TYPE

from forecasting_pipeline_tests.conftest import http_json

CONFIG = """
[checks]
positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "409", "422", "503"]
"""
# Cases per operation and generation mode: about 12 operations x 2 modes x 10 cases in well under a minute.
CASES = 10


def test_when_any_operation_gets_generated_requests_then_every_answer_is_what_the_schema_says(service):
    # A run's batch is bytes: generated bodies go as they are (and are refused 400 unless they are an .npz).
    schemathesis.serializer.alias(MEDIA_TYPE, "application/octet-stream")
    schema = schemathesis.openapi.from_url(
        service.url + "/openapi.json", headers=service.auth(), config=SchemathesisConfig.from_str(CONFIG),
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: dict[str, str] = {}

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
            def answers_as_documented(case):
                case.call_and_validate(base_url=service.url, headers=service.auth())

            try:
                answers_as_documented()
            except hypothesis.errors.Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # an operation that takes nothing cannot be given wrong input
            except (Exception, BaseExceptionGroup) as failure:  # noqa: BLE001 - every operation is tried; all are reported
                failures[f"{operation.label} ({mode.value})"] = str(failure)[:3000]

    assert {op.label for op in operations} >= {"POST /predict-chronos2", "POST /predict-batch-chronos2",
                                               "POST /runs/forecast", "GET /metrics", "GET /showcase/bars",
                                               "GET /showcase/models", "GET /showcase/past-forecasts",
                                               "GET /showcase/rolling-scores", "GET /showcase/ensemble-weights"}
    assert not failures, "\n\n".join(f"{name}:\n{text}" for name, text in failures.items())


def test_when_the_schemas_own_examples_are_sent_then_they_are_answered_200(service):
    _status, spec, _ = service.get("/openapi.json")
    examples = spec["components"]["schemas"]["ForecastRequest"]["examples"]

    answers = [service.post("/predict-chronos2", example)[0] for example in examples]

    assert answers == [200] * len(examples)
    assert http_json("GET", service.url + "/openapi.json")[0] == 401
