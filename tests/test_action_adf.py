"""The `adf_pipeline` executor against a local HTTPS stand-in for ARM (tests/arm_stub.py).

The real azure-mgmt-core `AsyncARMPipelineClient` (bearer token policy, ARM logging, no
retries) sends the request over TLS to 127.0.0.1; planned actions come from a real rules file
through `parse_rules` -> `decode_body` -> `plan_rule` -> `reveal`.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.pipeline.transport import AioHttpTransport

from tests.arm_stub import ArmStub, AsyncStubCredential, running_stub
from tests.conftest import TOPIC, eg
from worker.actions.adf_pipeline import AdfPipelineExecutor
from worker.errors import ActionError
from worker.events import decode_body
from worker.plan import PlannedAction, plan_rule
from worker.rules import parse_rules
from worker.settings import Settings
from worker.templates import reveal

FACTORY = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-data/providers/"
    "Microsoft.DataFactory/factories/adf-demo"
)
SECRET = "s3cr3t-value"
ENVIRON = {"ADF_TOKEN": SECRET}


@pytest.fixture(scope="module")
def stub() -> Iterator[ArmStub]:
    with running_stub() as server:
        yield server


@pytest.fixture
def arm(stub: ArmStub) -> ArmStub:
    stub.reset()
    return stub


def plan(
    tmp_path: Path,
    *,
    factory: str = FACTORY,
    parameters: str | None = None,
    environ: dict[str, str] = ENVIRON,
    data: dict[str, Any] | None = None,
) -> tuple[PlannedAction, Any]:
    if parameters is None:
        parameters = '{model: "{{ data.modelName }}", token: "${ADF_TOKEN}", epochs: 3}'
    rules = f"""
version: 1
topics: ["{TOPIC}"]
rules:
  - name: ingest-on-register
    actions:
      - type: adf_pipeline
        id: ingest
        factory: "{factory}"
        pipeline: "ingest {{{{ data.modelName }}}}"
        parameters: {parameters}
"""
    ruleset = parse_rules(rules, "rules.yaml", base_dir=tmp_path, environ=environ)
    event = eg("ev-1", data={"modelName": "churn"} if data is None else data)
    events, rejections = decode_body(json.dumps(event))
    assert not rejections
    [planned] = plan_rule(ruleset.rules[0], events[0])
    assert isinstance(planned, PlannedAction)
    return planned, reveal(planned.params, environ)


@pytest.fixture
async def make_executor(arm: ArmStub) -> AsyncIterator[Any]:
    made: list[AdfPipelineExecutor] = []

    def make(cloud: str = "AzureCloud", base_url: str | None = None) -> AdfPipelineExecutor:
        context = ssl.create_default_context(cafile=str(arm.cert_path))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        executor = AdfPipelineExecutor(
            Settings(azure_cloud=cloud),
            credential=AsyncStubCredential(),
            transport=AioHttpTransport(session=session, session_owner=True),
            base_url=base_url or arm.url,
        )
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.aclose()


async def test_create_run_posts_parameters_with_token_and_request_id(arm, make_executor, tmp_path):
    """One POST to createRun: the body is the parameters (secret revealed), api-version
    2018-06-01, a bearer token for ARM's scope, the key as x-ms-client-request-id."""
    planned, params = plan(tmp_path)
    executor = make_executor()
    facts = await executor.execute(planned, params)

    [call] = arm.requests
    assert call.method == "POST"
    assert call.path == f"{FACTORY}/pipelines/ingest%20churn/createRun"
    assert call.query == {"api-version": "2018-06-01"}
    assert call.body == {"model": "churn", "token": SECRET, "epochs": 3}
    assert call.headers["authorization"].startswith("Bearer ")
    assert executor._credential.scopes == ["https://management.azure.com/.default"]
    assert call.headers["x-ms-client-request-id"] == str(uuid.UUID(hex=planned.key))
    assert "aml-event-worker/" in call.headers["user-agent"]
    assert facts is not None and facts["run_id"]
    assert facts == {"run_id": facts["run_id"], "factory": FACTORY, "pipeline": "ingest churn"}


async def test_sovereign_cloud_token_scope(arm, make_executor, tmp_path):
    """The token is asked for the cloud's ARM audience, whatever base_url points at."""
    planned, params = plan(tmp_path)
    executor = make_executor("AzureUSGovernment")
    await executor.execute(planned, params)
    assert executor._credential.scopes == ["https://management.usgovcloudapi.net/.default"]
    assert executor.arm_endpoint == "https://management.usgovcloudapi.net"


async def test_no_parameters_sends_an_empty_object(arm, make_executor, tmp_path):
    """Without `parameters` the body is `{}`."""
    planned, params = plan(tmp_path, parameters="{}")
    await make_executor().execute(planned, params)
    assert arm.requests[0].body == {}


async def test_503_with_retry_after_is_retryable_and_not_retried_by_the_sdk(
    arm, make_executor, tmp_path
):
    """503 + Retry-After: retryable with retry_after_s; exactly one request (retries are ours)."""
    arm.fail("POST", "/createRun$", 503, headers={"Retry-After": "7"})
    planned, params = plan(tmp_path)
    with pytest.raises(ActionError) as caught:
        await make_executor().execute(planned, params)
    assert caught.value.retryable is True
    assert caught.value.retry_after_s == 7
    assert "HTTP 503" in str(caught.value)
    assert len(arm.requests) == 1


async def test_429_is_retryable(arm, make_executor, tmp_path):
    """ARM throttling is retryable."""
    arm.fail("POST", "/createRun$", 429, headers={"Retry-After": "2"})
    planned, params = plan(tmp_path)
    with pytest.raises(ActionError) as caught:
        await make_executor().execute(planned, params)
    assert caught.value.retryable is True
    assert caught.value.retry_after_s == 2


async def test_400_is_not_retryable_and_hides_the_secret(arm, make_executor, tmp_path):
    """400: not retryable; ARM's code and message are shown with the secret masked."""
    body = {
        "error": {
            "code": "BadRequest",
            "message": f"Parameter token has an invalid value '{SECRET}'",
        }
    }
    arm.fail("POST", "/createRun$", 400, body)
    planned, params = plan(tmp_path)
    with pytest.raises(ActionError) as caught:
        await make_executor().execute(planned, params)
    assert caught.value.retryable is False
    assert caught.value.retry_after_s is None
    assert "BadRequest" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_client_errors_are_not_retryable(arm, make_executor, tmp_path, status):
    """Missing rights or an unknown factory/pipeline: another attempt will not help."""
    arm.fail("POST", "/createRun$", status)
    planned, params = plan(tmp_path)
    with pytest.raises(ActionError) as caught:
        await make_executor().execute(planned, params)
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    "factory",
    [
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/x",
        "adf-demo",
        FACTORY + "/pipelines/p",
    ],
)
async def test_bad_factory_id_is_not_retryable(arm, make_executor, tmp_path, factory):
    """A `factory` that is not a data factory's ARM id fails before any request."""
    planned, params = plan(tmp_path, factory=factory)
    with pytest.raises(ActionError) as caught:
        await make_executor().execute(planned, params)
    assert caught.value.retryable is False
    assert "not a data factory" in str(caught.value)
    assert arm.requests == []


async def test_factory_id_is_case_insensitive(arm, make_executor, tmp_path):
    """ARM ids are case-insensitive: a lower-cased provider path is accepted."""
    planned, params = plan(tmp_path, factory=FACTORY.lower())
    facts = await make_executor().execute(planned, params)
    assert facts is not None and facts["run_id"]


async def test_network_error_is_retryable(make_executor, tmp_path):
    """Nothing listening: a retryable network error."""
    from tests.conftest import free_port

    planned, params = plan(tmp_path)
    executor = make_executor(base_url=f"https://127.0.0.1:{free_port()}")
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    assert caught.value.retryable is True
    assert "network error" in str(caught.value)


LONG_SECRET = "Zq8vL2mN4pR6tY1xC3bV5nM7kJ9hG0fD2sA4qW6eR8tY0uI2oP4a"  # 52 characters


async def test_an_arm_error_is_redacted_before_it_is_cut(arm, make_executor, tmp_path):
    """ARM quoting the secret across the 300-character cut: the excerpt used to be cut
    first, leaving 30 characters of the secret in the dead letter; now no 8-character
    piece of it is shown."""
    message = "x" * 242 + f" invalid value '{LONG_SECRET}' for parameter token"  # 270-321
    arm.fail("POST", "/createRun$", 400, {"error": {"code": "BadRequest", "message": message}})
    planned, params = plan(tmp_path, environ={"ADF_TOKEN": LONG_SECRET})
    with pytest.raises(ActionError) as caught:
        await make_executor().execute(planned, params)
    text = str(caught.value)
    assert "HTTP 400: BadRequest: xxx" in text and "***" in text
    pieces = {LONG_SECRET[i : i + 8] for i in range(len(LONG_SECRET) - 7)}
    assert not [piece for piece in pieces if piece in text], text


async def test_a_lone_surrogate_in_the_pipeline_name_and_parameters_is_sent(
    arm, make_executor, tmp_path
):
    """Event data with a lone surrogate: the parameters go out as JSON (the surrogate kept
    as its escape), the pipeline name in the URL with U+FFFD; no UnicodeEncodeError."""
    planned, params = plan(
        tmp_path, parameters='{model: "{{ data.modelName }}"}', data={"modelName": "m\udc80"}
    )
    facts = await make_executor().execute(planned, params)
    assert facts is not None and facts["pipeline"] == "ingest m\udc80"
    [call] = arm.calls("POST", "/createRun")
    assert call.path == f"{FACTORY}/pipelines/ingest%20m%EF%BF%BD/createRun"
    assert call.body == {"model": "m\udc80"}
