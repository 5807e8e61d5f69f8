"""The `aml_job` executor with the real `MLClient` against a local HTTPS stub (tests/arm_stub.py).

The client is built by `build_ml_client` (the production options: no SDK retries, no
telemetry) aimed at the stub with `cloud=` + `cloud_metadata=` and the stub's certificate
(shared/tooling-notes.md); planned actions come from a real rules file through `parse_rules`
-> `decode_body` -> `plan_rule` -> `reveal`.

Calls the SDK (azure-ai-ml 1.35) made against the stub, `<WS>` being the workspace ARM id:
- every submission first: `GET <WS>/jobs/aew-<key>` (ours: is it already submitted?)
- command job from YAML: only `PUT <WS>/jobs/aew-<key>?api-version=2025-01-01-preview`
  (environment and compute given by name become ARM ids locally; the body carries git info
  of the working directory as `mlflow.source.git.*` properties, so no test compares bodies);
- `jobs.get(name)`: `GET <WS>/jobs/{name}?api-version=2024-01-01-preview` (a pipeline job is
  read a second time with the same call);
- pipeline job from YAML: `GET <WS>?api-version=2024-10-01-preview` (the workspace),
  `PUT <WS>/components/azureml_anonymous/versions/<hash>` (its inline step), then
  `PUT <WS>/jobs/aew-<key>?api-version=2024-01-01-preview`;
- rerun of a fetched job: `GET` of the old job, then the `PUT` of the copy; the SDK submits
  a fetched pipeline job too (the real service may refuse it: see worker/actions/aml_job.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.arm_stub import ArmStub, StubCredential, running_stub
from tests.conftest import ROOT, TOPIC, eg, free_port
from worker.actions.aml_job import (
    TAG_EVENT_ID,
    TAG_IDEMPOTENCY_KEY,
    TAG_RULE,
    AmlJobExecutor,
    build_ml_client,
    parse_workspace_id,
)
from worker.errors import ActionError
from worker.events import decode_body
from worker.plan import PlannedAction, plan_rule
from worker.rules import parse_rules
from worker.settings import Settings
from worker.templates import reveal

# azure-ai-ml's schemas are built with marshmallow 3 APIs that warn about marshmallow 4.
pytestmark = [
    pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning"),
    pytest.mark.filterwarnings("ignore::marshmallow.warnings.ChangedInMarshmallow4Warning"),
]

OTHER_WS = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-other/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws-other"
)
ENV_ID = TOPIC + "/environments/my-env/versions/3"
SECRET = "s3cr3t-note"
ENVIRON = {"AML_NOTE": SECRET}
DATA = {"modelName": "churn", "driftCoefficient": 0.42, "version": 7}

COMMAND_JOB = """\
$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
command: python train.py --drift ${{inputs.drift}} -e ${{inputs.epochs}} -d ${{inputs.data}}
environment: azureml:my-env:3
compute: azureml:cpu-cluster
experiment_name: base-exp
inputs:
  drift: 0.1
  epochs: 3
  note: none
  data:
    type: uri_folder
    path: azureml://datastores/workspaceblobstore/paths/data/
tags:
  team: ml
"""

PIPELINE_JOB = """\
$schema: https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json
type: pipeline
experiment_name: pipe-exp
settings:
  default_compute: azureml:cpu-cluster
inputs:
  drift: 0.1
  data:
    type: uri_folder
    path: azureml://datastores/workspaceblobstore/paths/data/
jobs:
  train:
    type: command
    command: python train.py --drift ${{inputs.drift}} --data ${{inputs.data}}
    environment: azureml:my-env:3
    inputs:
      drift: ${{parent.inputs.drift}}
      data: ${{parent.inputs.data}}
"""


@pytest.fixture(scope="module")
def stub() -> Iterator[ArmStub]:
    # MLClient records its cloud process-wide (AZUREML_CURRENT_CLOUD): put it back after.
    saved = os.environ.get("AZUREML_CURRENT_CLOUD")
    with running_stub() as server:
        yield server
    if saved is None:
        os.environ.pop("AZUREML_CURRENT_CLOUD", None)
    else:
        os.environ["AZUREML_CURRENT_CLOUD"] = saved


@pytest.fixture
def arm(stub: ArmStub) -> ArmStub:
    stub.reset()
    return stub


class StubClients:
    """A client_factory building real MLClients aimed at one stub; records what it built."""

    def __init__(self, stub: ArmStub, port: int | None = None) -> None:
        self.stub = stub
        self.port = port or stub.port
        self.credential = StubCredential()
        self.built: list[tuple[str, str, str]] = []

    def __call__(self, subscription: str, resource_group: str, workspace: str) -> Any:
        self.built.append((subscription, resource_group, workspace))
        base = f"https://127.0.0.1:{self.port}/"
        metadata = {**self.stub.cloud_metadata(), **{k: base for k in _ENDPOINT_KEYS}}
        return build_ml_client(
            self.credential,
            subscription,
            resource_group,
            workspace,
            cloud=f"aew-stub-{self.port}",
            cloud_metadata=metadata,
            connection_verify=str(self.stub.cert_path),
        )


_ENDPOINT_KEYS = (
    "azure_portal",
    "resource_manager",
    "active_directory",
    "aml_resource_id",
    "registry_discovery_endpoint",
)


@pytest.fixture
async def executor(arm: ArmStub) -> Any:
    clients = StubClients(arm)
    made = AmlJobExecutor(Settings(), credential=clients.credential, client_factory=clients)
    made.clients = clients  # type: ignore[attr-defined]
    yield made
    await made.aclose()


def plan(
    tmp_path: Path,
    action: dict[str, Any],
    *,
    event_id: str = "ev-1",
    topic: str = TOPIC,
    rule: str = "drift-retrain",
    environ: dict[str, str] = ENVIRON,
    data: dict[str, Any] = DATA,
) -> tuple[PlannedAction, Any]:
    """One planned action through the real rules -> events -> plan -> reveal path."""
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "train.yml").write_text(COMMAND_JOB)
    (jobs / "pipeline.yml").write_text(PIPELINE_JOB)
    rules = {
        "version": 1,
        "topics": [topic],
        "rules": [{"name": rule, "actions": [{"type": "aml_job", **action}]}],
    }
    ruleset = parse_rules(json.dumps(rules), "rules.yaml", base_dir=tmp_path, environ=environ)
    events, rejections = decode_body(json.dumps(eg(event_id, data=data, topic=topic)))
    assert not rejections
    [planned] = plan_rule(ruleset.rules[0], events[0])
    assert isinstance(planned, PlannedAction), planned
    return planned, reveal(planned.params, environ)


RETRAIN = {
    "id": "retrain",
    "job": "jobs/train.yml",
    "experiment_name": "retrain-{{ data.modelName }}",
    "display_name": "Retrain {{ data.modelName }}",
    "compute": "gpu-cluster",
    "inputs": {
        "drift": "{{ data.driftCoefficient }}",
        "epochs": "5",
        "data": "azureml:drift-data:{{ data.version }}",
    },
    "tags": {"trigger": "{{ event.type }}"},
}


def job_puts(arm: ArmStub) -> list[Any]:
    return arm.calls("PUT", "/jobs/")


async def test_job_yaml_submits_the_named_job_with_overrides(arm, executor, tmp_path):
    """`job:` -> one PUT <WS>/jobs/aew-<key> with the command, overridden inputs, merged
    tags (ours included), experiment, display name and compute."""
    planned, params = plan(tmp_path, RETRAIN)
    facts = await executor.execute(planned, params)

    name = "aew-" + planned.key
    [put] = job_puts(arm)
    assert put.path == f"{TOPIC}/jobs/{name}"
    assert put.query["api-version"]
    props = put.body["properties"]
    assert props["jobType"] == "Command"
    assert props["command"].startswith("python train.py --drift ${{inputs.drift}}")
    assert props["experimentName"] == "retrain-churn"
    assert props["displayName"] == "Retrain churn"
    assert props["computeId"] == f"{TOPIC}/computes/gpu-cluster"
    assert props["environmentId"] == ENV_ID
    assert props["inputs"]["drift"] == {"value": "0.42", "jobInputType": "literal"}
    assert props["inputs"]["epochs"] == {"value": "5", "jobInputType": "literal"}
    assert props["inputs"]["note"] == {"value": "none", "jobInputType": "literal"}
    assert props["inputs"]["data"]["jobInputType"] == "uri_folder"
    assert props["inputs"]["data"]["uri"] == f"{TOPIC}/data/drift-data/versions/7"
    assert props["tags"] == {
        "team": "ml",
        "trigger": "Microsoft.MachineLearningServices.RunStatusChanged",
        TAG_EVENT_ID: "ev-1",
        TAG_RULE: "drift-retrain",
        TAG_IDEMPOTENCY_KEY: planned.key,
    }
    assert put.headers["authorization"].startswith("Bearer ")
    assert facts == {
        "job_name": name,
        "studio_url": facts["studio_url"],
        "workspace": TOPIC,
        "already_submitted": False,
    }
    assert name in facts["studio_url"]
    assert arm.unknown == []


async def test_second_execute_finds_the_job_already_submitted(arm, executor, tmp_path):
    """A replay of the same planned action creates no second job: already_submitted."""
    planned, params = plan(tmp_path, RETRAIN)
    await executor.execute(planned, params)
    again = await executor.execute(planned, params)

    assert len(arm.jobs) == 1
    assert len(job_puts(arm)) == 1
    assert again is not None and again["already_submitted"] is True
    assert again["job_name"] == "aew-" + planned.key


async def test_same_name_race_is_resolved_by_already_exists(arm, executor, tmp_path):
    """If the look-up misses a job that exists (a racing replica), the service's 400
    "A job with this name already exists" is looked up and treated as submitted."""
    planned, params = plan(tmp_path, RETRAIN)
    name = "aew-" + planned.key
    arm.add_job(TOPIC, name, {"jobType": "Command", "command": "something else"})
    arm.fail("GET", f"/jobs/{name}$", 404)  # the first look-up misses it

    facts = await executor.execute(planned, params)

    [put] = job_puts(arm)
    assert put.status == 400
    assert facts is not None and facts["already_submitted"] is True
    assert len(arm.jobs) == 1


async def test_rerun_of_a_command_job_submits_a_copy_under_our_name(arm, executor, tmp_path):
    """`rerun:` -> GET the old job, PUT aew-<key> with its command and our overrides; the
    old job's identity (its Studio link, its generated display name) is not copied."""
    old = arm.add_job(
        TOPIC,
        "train-2024-06",
        {
            "jobType": "Command",
            "command": "python train.py --drift ${{inputs.drift}}",
            "environmentId": ENV_ID,
            "computeId": TOPIC + "/computes/cpu-cluster",
            "experimentName": "base-exp",
            "displayName": "train-2024-06",
            "inputs": {"drift": {"jobInputType": "literal", "value": "0.1"}},
            "outputs": {},
            "tags": {"team": "ml"},
            "properties": {},
            "status": "Completed",
        },
    )
    action = {"rerun": "train-2024-06", "inputs": {"drift": "{{ data.driftCoefficient }}"}}
    planned, params = plan(tmp_path, action)
    facts = await executor.execute(planned, params)

    name = "aew-" + planned.key
    [put] = job_puts(arm)
    assert put.path == f"{TOPIC}/jobs/{name}"
    props = put.body["properties"]
    assert props["command"] == old["properties"]["command"]
    assert props["experimentName"] == "base-exp"
    assert props["computeId"] == TOPIC + "/computes/cpu-cluster"
    assert props["inputs"]["drift"]["value"] == "0.42"
    assert props["tags"]["team"] == "ml"
    assert props["tags"][TAG_IDEMPOTENCY_KEY] == planned.key
    assert props.get("displayName") in (None, name)
    assert "train-2024-06" not in json.dumps(props.get("services"))
    assert facts is not None and facts["job_name"] == name
    assert facts["already_submitted"] is False
    assert len(arm.jobs) == 2


async def test_rerun_of_a_missing_job_is_not_retryable(arm, executor, tmp_path):
    """The job to rerun does not exist: a permanent error naming it."""
    planned, params = plan(tmp_path, {"rerun": "no-such-job"})
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    assert caught.value.retryable is False
    assert "no-such-job" in str(caught.value)
    assert job_puts(arm) == []


async def test_pipeline_job_yaml_and_its_rerun(arm, executor, tmp_path):
    """`job:` with a pipeline YAML submits it (anonymous component first); `rerun:` of that
    pipeline job goes through the SDK, and a service refusal says to use `job:`."""
    planned, params = plan(
        tmp_path, {"id": "pipe", "job": "jobs/pipeline.yml", "inputs": {"drift": "0.9"}}
    )
    facts = await executor.execute(planned, params)
    first = "aew-" + planned.key
    [put] = job_puts(arm)
    assert put.path.endswith(f"/jobs/{first}")
    assert put.body["properties"]["jobType"] == "Pipeline"
    assert put.body["properties"]["inputs"]["drift"]["value"] == "0.9"
    assert arm.calls("PUT", "/components/azureml_anonymous/")
    assert facts is not None and facts["already_submitted"] is False

    rerun, rerun_params = plan(tmp_path, {"id": "again", "rerun": first})
    again = await executor.execute(rerun, rerun_params)
    assert again is not None and again["job_name"] == "aew-" + rerun.key
    copy = arm.calls("PUT", f"/jobs/aew-{rerun.key}")[-1]
    assert copy.body["properties"]["jobType"] == "Pipeline"

    refused, refused_params = plan(tmp_path, {"id": "refused", "rerun": first})
    arm.fail("PUT", f"/jobs/aew-{refused.key}$", 400)
    with pytest.raises(ActionError) as caught:
        await executor.execute(refused, refused_params)
    assert caught.value.retryable is False
    assert "use 'job:' with the pipeline YAML" in str(caught.value)


async def test_workspace_defaults_to_the_topic_and_a_parameter_overrides_it(
    arm, executor, tmp_path
):
    """No `workspace:` -> the event's topic; `workspace:` -> that workspace (any casing),
    each with its own cached client."""
    planned, params = plan(tmp_path, RETRAIN)
    await executor.execute(planned, params)
    other, other_params = plan(tmp_path, {**RETRAIN, "workspace": OTHER_WS.lower()})
    facts = await executor.execute(other, other_params)
    third, third_params = plan(tmp_path, RETRAIN, event_id="ev-3")
    await executor.execute(third, third_params)

    paths = [put.path for put in job_puts(arm)]
    assert paths[0] == f"{TOPIC}/jobs/aew-{planned.key}"
    assert paths[1].casefold() == f"{OTHER_WS}/jobs/aew-{other.key}".casefold()
    assert paths[2] == f"{TOPIC}/jobs/aew-{third.key}"
    assert facts is not None and facts["workspace"].casefold() == OTHER_WS.casefold()
    assert [b[2] for b in executor.clients.built] == ["ws-demo", "ws-other"]


async def test_a_topic_that_is_not_a_workspace_is_not_retryable(arm, executor, tmp_path):
    """Without `workspace:`, a topic that is no workspace id is a permanent error."""
    topic = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa"
    planned, params = plan(tmp_path, RETRAIN, topic=topic)
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    assert caught.value.retryable is False
    assert "not an Azure ML workspace" in str(caught.value)

    bad, bad_params = plan(tmp_path, {**RETRAIN, "workspace": "ws-demo"})
    with pytest.raises(ActionError) as caught:
        await executor.execute(bad, bad_params)
    assert caught.value.retryable is False
    assert arm.requests == []


async def test_503_is_retryable_with_retry_after_and_one_request(arm, executor, tmp_path):
    """503 + Retry-After on the PUT: retryable, retry_after_s set, no SDK-side retry."""
    arm.fail("PUT", "/jobs/", 503, headers={"Retry-After": "11"})
    planned, params = plan(tmp_path, RETRAIN)
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    assert caught.value.retryable is True
    assert caught.value.retry_after_s == 11
    assert len(job_puts(arm)) == 1
    assert arm.jobs == {}


async def test_429_on_the_lookup_is_retryable(arm, executor, tmp_path):
    """Throttling anywhere in the attempt is retryable."""
    arm.fail("GET", "/jobs/", 429, headers={"Retry-After": "3"})
    planned, params = plan(tmp_path, RETRAIN)
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    assert caught.value.retryable is True
    assert caught.value.retry_after_s == 3


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_client_errors_are_not_retryable_and_hide_secrets(arm, executor, tmp_path, status):
    """400/403/404 (a bad job, no rights, no such workspace): permanent; a secret the
    service echoes is masked."""
    body = {"error": {"code": "UserError", "message": f"Input note '{SECRET}' is invalid"}}
    arm.fail("PUT", "/jobs/", status, body)
    planned, params = plan(tmp_path, {**RETRAIN, "inputs": {"note": "${AML_NOTE}"}})
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    assert caught.value.retryable is False
    assert f"HTTP {status}" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)
    assert job_puts(arm)[0].body["properties"]["inputs"]["note"]["value"] == SECRET


async def test_an_error_echoing_a_secret_is_redacted_before_it_is_cut(arm, executor, tmp_path):
    """The service quoting a 52-character secret across the 400-character cut: the excerpt
    used to be cut first, leaving 30 of its characters unmasked in logs and dead letters."""
    secret = "Zq8vL2mN4pR6tY1xC3bV5nM7kJ9hG0fD2sA4qW6eR8tY0uI2oP4a"
    message = "x" * 345 + f" input note '{secret}' is invalid"  # the secret at 370-421
    arm.fail("PUT", "/jobs/", 400, {"error": {"code": "UserError", "message": message}})
    planned, params = plan(
        tmp_path, {**RETRAIN, "inputs": {"note": "${AML_NOTE}"}}, environ={"AML_NOTE": secret}
    )
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    text = str(caught.value)
    assert caught.value.retryable is False and "HTTP 400" in text and "***" in text
    pieces = {secret[i : i + 8] for i in range(len(secret) - 7)}
    assert not [piece for piece in pieces if piece in text], text


async def test_a_lone_surrogate_from_the_event_is_submitted_as_text(arm, executor, tmp_path):
    """Event data with a lone surrogate in the display name, experiment, tags and inputs:
    the job is submitted with U+FFFD in its place, not refused or crashed."""
    planned, params = plan(tmp_path, RETRAIN, data={**DATA, "modelName": "ch\udc80urn"})
    facts = await executor.execute(planned, params)

    assert facts is not None and facts["already_submitted"] is False
    [put] = job_puts(arm)
    props = put.body["properties"]
    assert props["displayName"] == "Retrain ch\ufffdurn"
    assert props["experimentName"] == "retrain-ch\ufffdurn"


async def test_unknown_input_and_mistyped_literal_are_not_retryable(arm, executor, tmp_path):
    """An input the job does not declare, or a non-number for a numeric one: permanent."""
    planned, params = plan(tmp_path, {**RETRAIN, "inputs": {"nope": "1"}})
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    assert caught.value.retryable is False
    assert "no input 'nope'" in str(caught.value)

    planned, params = plan(tmp_path, {**RETRAIN, "inputs": {"epochs": "many"}})
    with pytest.raises(ActionError) as caught:
        await executor.execute(planned, params)
    assert caught.value.retryable is False
    assert "input 'epochs' takes integer values" in str(caught.value)
    assert job_puts(arm) == []


async def test_a_map_value_replaces_an_input_with_a_new_input(arm, executor, tmp_path):
    """`inputs: {data: {type: uri_file, path: ...}}` replaces the input, type included."""
    path = "azureml://datastores/workspaceblobstore/paths/{{ data.modelName }}.csv"
    inputs = {"data": {"type": "uri_file", "path": path}}
    planned, params = plan(tmp_path, {**RETRAIN, "inputs": inputs})
    await executor.execute(planned, params)
    [put] = job_puts(arm)
    assert put.body["properties"]["inputs"]["data"] == {
        "uri": "azureml://datastores/workspaceblobstore/paths/churn.csv",
        "jobInputType": "uri_file",
    }


async def test_unreachable_service_is_retryable(arm, tmp_path):
    """Nothing listening: a retryable network error."""
    clients = StubClients(arm, port=free_port())
    executor = AmlJobExecutor(Settings(), credential=clients.credential, client_factory=clients)
    planned, params = plan(tmp_path, RETRAIN)
    try:
        with pytest.raises(ActionError) as caught:
            await executor.execute(planned, params)
    finally:
        await executor.aclose()
    assert caught.value.retryable is True
    assert "network error" in str(caught.value)


def test_parse_workspace_id_is_case_insensitive():
    """ARM ids in any casing; anything else is None."""
    ws = parse_workspace_id(TOPIC.upper().replace("SUBSCRIPTIONS", "subscriptions"))
    assert ws is not None and ws.name == "WS-DEMO"
    assert parse_workspace_id(TOPIC + "/") is not None
    assert parse_workspace_id(TOPIC + "/jobs/x") is None
    assert parse_workspace_id("ws-demo") is None


def test_importing_the_module_does_not_import_azure_ai_ml():
    """azure.ai.ml costs about a second: only a submission may import it."""
    code = "import worker.actions.aml_job, sys; print('azure.ai.ml' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"
