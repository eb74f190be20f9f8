"""The contract is the schema: schemathesis generates requests for every operation of the service's own
``/openapi.json`` and checks every answer against it (status, content type, body, headers, and whether data
that fits the schema is accepted and data that does not is refused), over real HTTP on loopback against the
production-default service (conftest.py). Generation is derandomized, so every run sends the same cases.

The document is bound to the running service: a parameter or field that names an instrument of the universe
is an enum of the universe's symbols, and a forecast request is a known instrument or ad-hoc bars with a
calendar, within the service's bar limits. Data that fits it may still be refused by the domain: a known
instrument without a stored forecast yet (404), a model without rows (422), ad-hoc bars that fail validation (out of order, high below low: 422), a run's batch that
is not a valid ``.npz`` (400). Those answers are documented, so they count as accepted; a 5xx or an
undocumented answer fails.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import hypothesis
import hypothesis.errors
import jsonschema_rs
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from forecasting_pipeline.forecasting.batch_wire import MEDIA_TYPE

from forecasting_pipeline_tests.conftest import SYMBOLS, http_json

UNIVERSE_READS = ("/showcase/bars", "/showcase/scores", "/showcase/past-forecasts", "/showcase/rolling-scores",
                  "/showcase/ensemble-weights")

CONFIG = """
[checks]
positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "422", "503"]
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


def test_when_the_document_is_served_then_it_lists_the_services_universe_wherever_a_symbol_must_be_one(service):
    _status, spec, _ = service.get("/openapi.json")

    def symbol_schema(path: str) -> dict:
        [parameter] = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "symbol"]
        return parameter["schema"]

    assert {path: symbol_schema(path) for path in UNIVERSE_READS} == {
        path: {"type": "string", "enum": SYMBOLS} for path in UNIVERSE_READS}
    # Optional there: empty means every symbol.
    assert symbol_schema("/showcase/ml-prediction") == {"type": "string", "enum": ["", *SYMBOLS]}
    assert "x-instrument-universe" not in str(spec)


def _bars(count: int) -> list[dict]:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [{"ts": (start + timedelta(hours=i)).isoformat(), "open": 10, "high": 11, "low": 9, "close": 10, "volume": 1}
            for i in range(count)]


FORECAST_REQUESTS = {
    "a known instrument": ({"symbol": "AAPL", "timeframe": "1d"}, True),
    "a known instrument, bars and calendar null": ({"symbol": "AAPL", "timeframe": "1d", "bars": None, "calendar": None}, True),
    "ad-hoc bars with a calendar and a label": ({"symbol": "my series", "timeframe": "1h", "calendar": "24/7",
                                                "bars": _bars(64)}, True),
    "neither symbol nor bars": ({"timeframe": "1d"}, False),
    "a symbol outside the universe": ({"symbol": "ZZZZ", "timeframe": "1d"}, False),
    "a known instrument with a calendar": ({"symbol": "AAPL", "timeframe": "1d", "calendar": "XNYS"}, False),
    "bars without a calendar": ({"timeframe": "1h", "bars": _bars(64)}, False),
    "an unknown calendar": ({"timeframe": "1h", "calendar": "MOON", "bars": _bars(64)}, False),
    "fewer bars than validation keeps": ({"timeframe": "1h", "calendar": "24/7", "bars": _bars(63)}, False),
    "an unknown timeframe": ({"symbol": "AAPL", "timeframe": "1w"}, False),
    "a level Chronos-2 does not give": ({"symbol": "AAPL", "timeframe": "1d", "quantiles": [0.42]}, False),
}


def test_when_forecast_requests_are_held_to_the_document_then_it_admits_exactly_what_the_service_answers(service):
    _status, spec, _ = service.get("/openapi.json")
    validator = jsonschema_rs.validator_for({"$ref": "#/components/schemas/ForecastRequest", **spec})

    admitted = {name: validator.is_valid(body) for name, (body, _) in FORECAST_REQUESTS.items()}
    answered = {name: service.post("/predict-chronos2", body)[0] for name, (body, _) in FORECAST_REQUESTS.items()}

    assert admitted == {name: valid for name, (_, valid) in FORECAST_REQUESTS.items()}
    assert answered == {name: 200 if valid else 422 for name, (_, valid) in FORECAST_REQUESTS.items()}
