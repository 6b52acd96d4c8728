#!/usr/bin/env bash
# End-to-end on a kind cluster: create it, build and load the image, then run the acceptance
# test (scripts/e2e-cluster.sh: install, examples, injection, mTLS, a denied cross-environment
# call, rotation without restart, uninstall), then delete the cluster. Needs docker, kind,
# kubectl and helm.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${CLUSTER:-sds-injector-e2e}"
K8S_IMAGE="${K8S_IMAGE:-kindest/node:v1.33.1}"
IMAGE="ghcr.io/sds-injector/sds-injector:e2e"

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 2; }
done

cleanup() { kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

kind create cluster --name "$CLUSTER" --image "$K8S_IMAGE" --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

# The cluster is ready and holds the image: the acceptance test does the rest.
IMAGE="$IMAGE" PULL_POLICY=Never ./scripts/e2e-cluster.sh
echo "e2e-kind: all checks passed"
