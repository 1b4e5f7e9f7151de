#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s against the Kubernetes
# schemas (strict: unknown fields are errors) with PyPI's kubernetes-validate,
# installed into a cached virtual environment. Also checks that the
# kustomization lists exactly the manifests validated, and that the validator
# refuses a manifest with a wrong field (so a pass means something).
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION="1.30.0"
VALIDATE_VERSION="1.37.0"
VENV="$HOME/.cache/bulkhead/k8s-venv"
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$VALIDATE_VERSION"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATE_VERSION"
fi
manifests=()
for f in deploy/k8s/*.yaml; do
  case "$(basename "$f")" in
    kustomization.yaml|nats-values.yaml) ;;
    *) manifests+=("$f") ;;
  esac
done
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
listed=$("$VENV/bin/python" - <<'PY'
import yaml
k = yaml.safe_load(open("deploy/k8s/kustomization.yaml"))
print("\n".join(sorted("deploy/k8s/" + r for r in k["resources"])))
PY
)
if [ "$listed" != "$(printf '%s\n' "${manifests[@]}" | sort)" ]; then
  echo "check-k8s: the kustomization lists $listed, the directory holds ${manifests[*]}" >&2
  exit 1
fi
bad="$(mktemp)"
trap 'rm -f "$bad"' EXIT
sed 's/^  replicas: 2$/  replicaz: 2/' deploy/k8s/gateway.yaml > "$bad"
if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$bad" >/dev/null 2>&1; then
  echo "check-k8s: the validator accepted an unknown field" >&2
  exit 1
fi
echo "check-k8s: ${#manifests[@]} manifests valid against Kubernetes $K8S_VERSION (strict)"
