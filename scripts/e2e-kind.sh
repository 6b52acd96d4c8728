#!/usr/bin/env bash
# End-to-end on a kind cluster: build and load the image, helm install, label a namespace,
# apply the examples, check injection, readiness, a TLS request from inside the cluster and a
# cross-namespace denial, then tear down. Needs docker, kind, kubectl and helm.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${CLUSTER:-sds-injector-e2e}"
K8S_IMAGE="${K8S_IMAGE:-kindest/node:v1.33.1}"
IMAGE="ghcr.io/sds-injector/sds-injector:e2e"
NS=sds-system

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 2; }
done

cleanup() { kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

kind create cluster --name "$CLUSTER" --image "$K8S_IMAGE" --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

helm install sds charts/sds-injector --namespace "$NS" --create-namespace --wait --timeout 180s \
  --set image.repository="${IMAGE%:*}" --set image.tag=e2e --set image.pullPolicy=Never \
  --set config.images.agent="$IMAGE" --set config.images.pullPolicy=Never \
  --set-json 'config.namespacePolicy.rules=[{"namespaces":["shop-prod"],"environments":["prod"]},{"namespaces":["bank"],"environments":["dev"]}]'
helm test sds --namespace "$NS"

for ns in shop-prod bank; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "$ns" sds-injector.io/injection=enabled --overwrite
done
# The app images of the examples are placeholders: run a small HTTP server instead.
sed 's#registry.example/cart:1.4#python:3.11-slim#' examples/shop-prod.yaml \
  | kubectl apply -f -
kubectl -n shop-prod patch deployment cart --type=json \
  -p='[{"op":"add","path":"/spec/template/spec/containers/0/command","value":["python","-m","http.server","8080"]}]'
kubectl -n shop-prod rollout status deployment/cart --timeout=180s

pod=$(kubectl -n shop-prod get pod -l app=cart -o jsonpath='{.items[0].metadata.name}')
names=$(kubectl -n shop-prod get pod "$pod" -o jsonpath='{.spec.initContainers[*].name}')
[ "$names" = "sds-agent sds-envoy" ] || { echo "not injected: $names" >&2; exit 1; }
kubectl -n shop-prod wait --for=condition=Ready "pod/$pod" --timeout=120s

# A TLS handshake from inside the pod: Envoy presents the issuer-signed certificate (SPIFFE ID
# from the service account, DNS names from the Service). Its trust anchor is the prod CA only.
kubectl -n shop-prod exec "$pod" -c sds-agent -- python -c '
import socket, ssl
from cryptography import x509
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 8443)), server_hostname="cart")
cert = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
    x509.UniformResourceIdentifier)
assert uris == ["spiffe://cluster.local/ns/shop-prod/sa/cart"], uris
print("TLS handshake ok, issuer", cert.issuer.rfc4514_string(), "peer", uris)'
# The issuer audited that issuance on its stdout.
kubectl -n "$NS" logs -l app.kubernetes.io/name=sds-injector --tail=-1 | grep -q '"decision":"issued"'

# Cross-namespace isolation: bank may not have prod certificates.
if kubectl -n bank run intruder --image=python:3.11-slim --restart=Never \
     --annotations=sds-injector.io/env=prod -- sleep 1 2>err.txt; then
  echo "expected a denial" >&2; exit 1
fi
grep -q "may not use environment 'prod'" err.txt
rm -f err.txt
echo "e2e-kind: all checks passed"
