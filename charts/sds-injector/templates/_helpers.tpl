{{- define "sds.name" -}}sds-injector{{- end -}}
{{- define "sds.fullname" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}-sds-injector{{- end -}}
{{- define "sds.labels" -}}
app.kubernetes.io/name: sds-injector
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "sds.selector" -}}
app.kubernetes.io/name: sds-injector
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "sds.usesLabels" -}}
{{- range .Values.config.namespacePolicy.rules }}{{ if .namespaceSelector }}true{{ end }}{{ end -}}
{{- end -}}
{{- /* The webhook reads namespace labels for label rules and for the environment label. */}}
{{- define "sds.readsNamespaces" -}}
{{- if or (include "sds.usesLabels" .) .Values.config.namespaceEnvironmentLabel }}true{{ end -}}
{{- end -}}
