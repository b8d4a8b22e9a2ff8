"""deploy/kubernetes/: every manifest against the Kubernetes JSON schemas, offline, and against each other.

The schemas come with the kubernetes-validate package (no network at test time); strict mode rejects
a misspelt field. The cross-references are what a schema cannot see: labels, ports, probe paths,
secret keys, the migration Job and the drain time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from bot.app import INTERRUPT_WAIT
from bot.settings import Settings
from tests.test_container import CLOSE_MARGIN

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The oldest Kubernetes release still widely supported by managed offerings, and the newest schemas.
VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]
PEAK_RSS_BYTES = 159e6  # scenario (c)'s peak RSS, the basis of the memory request
NOT_OUR_SETTINGS = {"MPLCONFIGDIR"}  # matplotlib's own variable


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in YAML(typ="safe").load_all(path):
            if document is not None:
                found.append((path.name, document))
    return found


def one(kind: str) -> dict[str, Any]:
    [document] = [doc for _, doc in documents() if doc["kind"] == kind]
    return document


def pod_spec(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(kind)["spec"]["template"]["spec"]
    return spec


def bot_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec("Deployment")["containers"]
    [container] = containers
    return container


def quantity_bytes(value: str) -> float:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", value)
    assert match, f"unexpected memory quantity {value!r}"
    return int(match[1]) * {"Mi": 2**20, "Gi": 2**30}[match[2]]


def test_the_folder_holds_every_piece_of_the_deployment():
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == ["ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Secret", "Service"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "document"), documents(), ids=[name for name, _ in documents()])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(name, document, version):
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message} (Kubernetes {version})")


def test_a_misspelt_field_fails_the_schema_check():
    deployment = one("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_service_and_the_disruption_budget_select_exactly_the_deployments_pods():
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert one("Service")["spec"]["selector"] == selector
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    # The migration Job's pods must not receive traffic nor count in the budget.
    job_labels = one("Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()


def test_three_replicas_of_which_disruptions_take_one_at_a_time():
    assert one("Deployment")["spec"]["replicas"] == 3
    assert one("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_the_probes_and_the_service_reach_the_port_the_bot_listens_on():
    container = bot_container()
    [port] = container["ports"]
    assert int(one("ConfigMap")["data"]["PORT"]) == port["containerPort"]
    assert one("Service")["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])


def test_readiness_probes_readyz_and_liveness_livez_so_a_database_outage_restarts_nothing():
    container = bot_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"


def test_the_secret_holds_exactly_the_keys_the_pods_read_and_no_real_value():
    secret = one("Secret")
    refs = [
        entry["valueFrom"]["secretKeyRef"]
        for kind in ("Deployment", "Job")
        for container in pod_spec(kind)["containers"]
        for entry in container.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    ]
    assert {ref["name"] for ref in refs} == {secret["metadata"]["name"]}
    assert {ref["key"] for ref in refs} == set(secret["stringData"])
    for key, value in secret["stringData"].items():
        assert "change-me" in value, f"{key}: the template must hold a placeholder, not a secret"


def test_every_variable_the_pods_get_is_a_setting_of_the_bot_with_a_valid_value():
    fields = {name.upper() for name in Settings.model_fields}
    config = one("ConfigMap")["data"]
    assert [ref["configMapRef"]["name"] for ref in bot_container()["envFrom"]] == [
        one("ConfigMap")["metadata"]["name"]
    ]
    plain = {entry["name"]: entry["value"] for entry in bot_container()["env"] if "value" in entry}
    names = set(config) | set(plain) | set(one("Secret")["stringData"])
    assert names - NOT_OUR_SETTINGS <= fields
    values = {k.lower(): v for k, v in (config | plain).items() if k not in NOT_OUR_SETTINGS}
    settings = Settings(_env_file=None, **values)
    assert settings.migrate_on_start is False


def test_the_migration_job_runs_migrate_with_the_deployments_image():
    [container] = pod_spec("Job")["containers"]
    assert container["command"] == ["python", "-m", "bot", "migrate"]
    assert container["image"] == bot_container()["image"]
    assert pod_spec("Job")["restartPolicy"] in ("Never", "OnFailure")
    # The Deployment never migrates: it goes through the image's entrypoint to `run` with migration off.
    assert bot_container().get("args") == ["run"]


def test_kubernetes_waits_for_the_whole_drain_before_killing_a_pod():
    grace = float(one("ConfigMap")["data"]["SHUTDOWN_GRACE_SECONDS"])
    pre_stop = bot_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + grace + INTERRUPT_WAIT + CLOSE_MARGIN
    assert pod_spec("Deployment")["terminationGracePeriodSeconds"] >= needed > grace


def test_the_resources_rest_on_the_benchmarks_peak_memory():
    resources = bot_container()["resources"]
    request = quantity_bytes(resources["requests"]["memory"])
    limit = quantity_bytes(resources["limits"]["memory"])
    assert PEAK_RSS_BYTES <= request < limit
    assert resources["requests"]["cpu"] and resources["limits"]["cpu"]
