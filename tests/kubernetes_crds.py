"""Validates KEDA's and the Prometheus Operator's resources in rendered manifests against
models generated from their CRDs (cloudcoil): a wrong type or a missing field fails, and so does a
field the CRD does not have (the models ignore those, so each resource must survive a round trip).
Run by tests/unit/test_kubernetes.py in the manifest tools' venv: reads {label: rendered YAML} (JSON) on
stdin, prints {label: {"Kind/name": [problems]}}."""

import json
import sys

import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
from pydantic import ValidationError

MODELS = {("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
          ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor}  # fmt: skip


def problems(resource: dict) -> list[str]:
    model = MODELS[resource["apiVersion"], resource["kind"]]
    try:
        parsed = model.model_validate(resource)
    except ValidationError as error:
        return [f"{problem['loc']}: {problem['msg']}" for problem in error.errors(include_url=False)]
    again = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return [] if again == resource else [f"fields the CRD does not have or types it coerced: {resource} != {again}"]


def checked(text: str) -> dict[str, list[str]]:
    return {f"{resource['kind']}/{resource['metadata']['name']}": problems(resource)
            for resource in yaml.safe_load_all(text)
            if resource and (resource.get("apiVersion"), resource.get("kind")) in MODELS}  # fmt: skip


def main() -> None:
    print(json.dumps({label: checked(text) for label, text in json.load(sys.stdin).items()}))


if __name__ == "__main__":
    main()
