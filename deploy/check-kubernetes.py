#!/usr/bin/env python3
"""Schema check of poolgate's Kubernetes manifests.

Core kinds are validated strictly (unknown fields are errors) with PyPI's
kubernetes-validate against the Kubernetes version given by --kubernetes-version
(default: the package's latest). The Prometheus Operator's PodMonitor and
ServiceMonitor are not in the core schemas: they are validated against
deploy/kubernetes/schemas/monitoring.coreos.com-v1.json (the fields we use).
Any other unknown kind fails the check rather than passing unchecked.

Usage: check-kubernetes.py [--kubernetes-version 1.30.0] FILE...
"""
import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com-v1.json",
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubernetes-version", default=kubernetes_validate.latest_version())
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    failures = 0
    for name in args.files:
        try:
            docs = [d for d in yaml.safe_load_all(pathlib.Path(name).read_text()) if d]
        except (OSError, yaml.YAMLError) as e:
            print(f"FAIL {name}: {e}")
            failures += 1
            continue
        for doc in docs:
            what = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            try:
                if key in CRD_SCHEMAS:
                    schema = json.loads((HERE / "kubernetes" / "schemas" / CRD_SCHEMAS[key]).read_text())
                    jsonschema.validate(doc, schema)
                    print(f"ok   {what} (CRD, against {CRD_SCHEMAS[key]})")
                else:
                    kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
                    print(f"ok   {what} (Kubernetes {args.kubernetes_version}, strict)")
            except kubernetes_validate.SchemaNotFoundError:
                print(f"FAIL {what}: no schema for {key[0]} {key[1]}")
                failures += 1
            except kubernetes_validate.ValidationError as e:
                print(f"FAIL {what}: {e.message} at {'.'.join(str(p) for p in e.path)}")
                failures += 1
            except jsonschema.ValidationError as e:
                print(f"FAIL {what}: {e.message} at {'.'.join(str(p) for p in e.absolute_path)}")
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
