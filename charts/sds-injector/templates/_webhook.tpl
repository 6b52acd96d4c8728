{{- define "sds.webhookConfig" -}}
{{- $root := .root -}}
{{- $fullname := include "sds.fullname" $root }}
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {{ $fullname }}
  labels: {{- include "sds.labels" $root | nindent 4 }}
  {{- if eq $root.Values.tls.mode "cert-manager" }}
  annotations:
    cert-manager.io/inject-ca-from: {{ $root.Release.Namespace }}/{{ $fullname }}
  {{- end }}
webhooks:
  - name: inject.sds-injector.io
    admissionReviewVersions: [v1]
    sideEffects: None
    reinvocationPolicy: IfNeeded
    failurePolicy: {{ $root.Values.webhook.failurePolicy }}
    timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
    matchPolicy: Equivalent
    clientConfig:
      service:
        name: {{ $fullname }}
        namespace: {{ $root.Release.Namespace }}
        path: /mutate
        port: 443
      {{- if .caBundle }}
      caBundle: {{ .caBundle }}
      {{- end }}
    rules:
      - operations: [CREATE]
        apiGroups: [""]
        apiVersions: [v1]
        resources: [pods]
        scope: Namespaced
      # kubectl debug: an ephemeral container may not mount the sidecars' volumes.
      - operations: [UPDATE]
        apiGroups: [""]
        apiVersions: [v1]
        resources: [pods/ephemeralcontainers]
        scope: Namespaced
    {{- include "sds.namespaceSelector" $root | nindent 4 }}
{{- if $root.Values.webhook.validateWorkloads }}
---
# Workloads whose pods would be denied are denied when applied (kubectl shows why). Fail open:
# this webhook is never the reason a workload cannot be applied or updated while it is down.
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: {{ $fullname }}-workloads
  labels: {{- include "sds.labels" $root | nindent 4 }}
  {{- if eq $root.Values.tls.mode "cert-manager" }}
  annotations:
    cert-manager.io/inject-ca-from: {{ $root.Release.Namespace }}/{{ $fullname }}
  {{- end }}
webhooks:
  - name: workloads.sds-injector.io
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Ignore
    timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
    matchPolicy: Equivalent
    clientConfig:
      service:
        name: {{ $fullname }}
        namespace: {{ $root.Release.Namespace }}
        path: /validate
        port: 443
      {{- if .caBundle }}
      caBundle: {{ .caBundle }}
      {{- end }}
    rules:
      - operations: [CREATE, UPDATE]
        apiGroups: [apps]
        apiVersions: [v1]
        resources: [deployments, statefulsets, daemonsets, replicasets]
        scope: Namespaced
      - operations: [CREATE, UPDATE]
        apiGroups: [batch]
        apiVersions: [v1]
        resources: [jobs, cronjobs]
        scope: Namespaced
    {{- include "sds.namespaceSelector" $root | nindent 4 }}
{{- end }}
{{- end -}}

{{- define "sds.namespaceSelector" -}}
namespaceSelector:
  matchExpressions:
    - key: sds-injector.io/injection
      operator: In
      values: [enabled]
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ concat (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces | toJson }}
# No objectSelector: a pod label is settable by whoever edits the pod, so excluding the
# webhook's own pods by label would let any tenant skip the webhook. The release namespace
# (above) excludes them.
{{- end -}}
