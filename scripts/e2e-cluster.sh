#!/usr/bin/env bash
# The acceptance test on any cluster kubectl reaches (kind, k3d, a real cluster): install the
# chart, apply the examples, and check injection, mTLS between two pods, a denied
# cross-environment call, a rotation without restart, and uninstall. Needs kubectl and helm, an
# image of this project the cluster can pull (IMAGE), and a cluster where it may create the
# namespaces sds-system, shop-prod and bank (it deletes them at the end).
#
#   IMAGE=registry.example/sds-injector:dev ./scripts/e2e-cluster.sh
#
# Each step says what it expects; the first unmet expectation stops the run with exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:?set IMAGE to an image of this project the cluster can pull}"
PULL="${PULL_POLICY:-IfNotPresent}"
APP_IMAGE="${APP_IMAGE:-python:3.11-slim}"  # stands in for the examples' placeholder app images
NS=sds-system

for tool in kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-cluster: $tool is required" >&2; exit 2; }
done

fail() { echo "e2e-cluster: FAILED: $*" >&2; exit 1; }
step() { echo "e2e-cluster: $*"; }

cleanup() {
  helm uninstall sds --namespace "$NS" >/dev/null 2>&1 || true
  kubectl delete namespace shop-prod bank "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "1. install: expect the release deployed and 'helm test' to pass"
helm install sds charts/sds-injector --namespace "$NS" --create-namespace --wait --timeout 300s \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy="$PULL" \
  --set config.images.agent="$IMAGE" --set config.images.pullPolicy="$PULL"
helm test sds --namespace "$NS"

step "2. namespaces: shop-prod (prod) and bank (dev), injection on, Pod Security restricted"
for pair in shop-prod:prod bank:dev; do
  ns="${pair%%:*}"
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "$ns" --overwrite sds-injector.io/injection=enabled "sds-injector.io/env=${pair##*:}" \
    pod-security.kubernetes.io/enforce=restricted
done

step "3. the examples, with a runnable app: expect both Deployments to roll out"
run_app='[{"op":"add","path":"/spec/template/spec/containers/0/command","value":["python","-m","http.server","PORT"]}]'
sed "s#registry.example/cart:1.4#${APP_IMAGE}#" examples/shop-prod.yaml | kubectl apply -f -
kubectl -n shop-prod patch deployment cart --type=json -p="${run_app/PORT/8080}"
sed "s#registry.example/ledger:1.0#${APP_IMAGE}#" examples/bank-dev.yaml | kubectl apply -f -
kubectl -n bank patch deployment ledger --type=json -p="${run_app/PORT/9090}"
kubectl -n shop-prod create service clusterip cart --tcp=8443:8443 --dry-run=client -o yaml | kubectl apply -f -
# A second shop-prod workload that calls cart over mTLS through its outbound port.
kubectl -n shop-prod apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend}
spec:
  selector: {matchLabels: {app: frontend}}
  template:
    metadata:
      labels: {app: frontend}
      annotations:
        sds-injector.io/business-line: retail
        sds-injector.io/outbound: "15001=cart.shop-prod.svc:8443"
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: app
          image: ${APP_IMAGE}
          command: [sleep, infinity]
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
EOF
for d in shop-prod/cart shop-prod/frontend bank/ledger; do
  kubectl -n "${d%%/*}" rollout status "deployment/${d##*/}" --timeout=300s
done

step "4. injection: expect init containers 'sds-agent sds-envoy' in every pod"
pod_of() { kubectl -n "$1" get pod -l "app=$2" -o jsonpath='{.items[0].metadata.name}'; }
for d in shop-prod/cart shop-prod/frontend bank/ledger; do
  names=$(kubectl -n "${d%%/*}" get pod "$(pod_of "${d%%/*}" "${d##*/}")" -o jsonpath='{.spec.initContainers[*].name}')
  [ "$names" = "sds-agent sds-envoy" ] || fail "${d}: init containers are '${names}'"
done

call() {  # call NS APP PORT -> prints the HTTP status of GET http://127.0.0.1:PORT/ from the app
  kubectl -n "$1" exec "$(pod_of "$1" "$2")" -c app -- python -c '
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen("http://127.0.0.1:" + sys.argv[1] + "/", timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)' "$3"
}

step "5. mTLS: frontend -> cart (both prod, same namespace): expect 200"
[ "$(call shop-prod frontend 15001)" = 200 ] || fail "frontend could not reach cart over mTLS"

step "6. isolation: ledger (bank, dev) -> cart (prod): expect 503 (the prod CA refuses a dev certificate)"
[ "$(call bank ledger 15001)" = 503 ] || fail "a dev workload reached a prod one"
step "6b. a pod asking bank for prod: expect a denial naming the environment"
if kubectl -n bank run intruder --image="$APP_IMAGE" --restart=Never \
     --annotations=sds-injector.io/env=prod -- sleep 1 2>/tmp/e2e-intruder.txt; then
  fail "a prod pod was admitted in bank"
fi
grep -q "prod" /tmp/e2e-intruder.txt || fail "the denial does not name the environment: $(cat /tmp/e2e-intruder.txt)"

step "7. rotation without restart: SIGHUP to cart's agent; expect a new serial, same Envoy, no restart"
cart=$(pod_of shop-prod cart)
serial() {
  kubectl -n shop-prod exec "$cart" -c sds-agent -- python -c '
import socket, ssl
from cryptography import x509
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 8443)), server_hostname="cart.shop-prod.svc")
print(format(x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number, "x"))'
}
restarts() { kubectl -n shop-prod get pod "$cart" -o jsonpath='{.status.initContainerStatuses[*].restartCount}'; }
before=$(serial); restarts_before=$(restarts)
kubectl -n shop-prod exec "$cart" -c sds-agent -- python -c 'import os, signal; os.kill(1, signal.SIGHUP)'
for _ in $(seq 1 30); do
  [ "$(serial)" != "$before" ] && break
  sleep 1
done
[ "$(serial)" != "$before" ] || fail "the certificate did not change within 30 s"
[ "$(restarts)" = "$restarts_before" ] || fail "a sidecar restarted"
[ "$(call shop-prod frontend 15001)" = 200 ] || fail "mTLS broke after the rotation"

step "8. uninstall: expect the release gone and the CA Secret kept (helm.sh/resource-policy: keep)"
helm uninstall sds --namespace "$NS" --wait
kubectl -n "$NS" get secret sds-sds-injector-ca >/dev/null || fail "the CA Secret did not outlive the release"
kubectl -n "$NS" delete secret sds-sds-injector-ca

echo "e2e-cluster: all checks passed"
