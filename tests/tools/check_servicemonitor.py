"""Validates ServiceMonitor manifests against the prometheus-operator CRD's schema.

kubernetes-validate knows only the built-in kinds, so the ServiceMonitor goes through the
Pydantic models of the `cloudcoil.models.prometheus_operator` package, generated from the
operator's CRD (types, required fields, patterns such as the duration of `interval`). Those
models ignore unknown keys, as the API server prunes them; a misspelt key would be lost
silently, so a key the model does not keep is an error here, as with `kubectl apply
--validate=strict`.

Usage: check_servicemonitor.py FILE...   (exit 0 when every ServiceMonitor passes; prints
one line per ServiceMonitor checked, and the reasons for any refusal)
"""

import sys

import pydantic
import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor


def dropped_keys(given, kept, path=""):
    """The paths of keys in `given` that are missing from `kept` (what the model ignored)."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "."]
        out = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(where)
            else:
                out.extend(dropped_keys(value, kept[key], where))
        return out
    if isinstance(given, list) and isinstance(kept, list):
        out = []
        for i, (g, k) in enumerate(zip(given, kept)):
            out.extend(dropped_keys(g, k, f"{path}[{i}]"))
        return out
    return []


def main(files):
    failed = False
    checked = 0
    for name in files:
        with open(name) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            if doc.get("kind") != "ServiceMonitor":
                continue
            checked += 1
            label = f"{name}: servicemonitor/{doc.get('metadata', {}).get('name')}"
            try:
                model = ServiceMonitor.model_validate(doc)
            except pydantic.ValidationError as e:
                print(f"ERROR {label}: {e}")
                failed = True
                continue
            kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
            unknown = dropped_keys(doc, kept)
            if unknown:
                print(f"ERROR {label}: unknown keys {', '.join(unknown)}")
                failed = True
            else:
                print(f"OK {label}")
    if checked == 0:
        print("ERROR no ServiceMonitor in " + " ".join(files))
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
