{{/*
Names and labels of the lockwrap chart. Names follow `helm create`: lockwrap.name, lockwrap.fullname,
lockwrap.chart, lockwrap.labels, lockwrap.selectorLabels, lockwrap.serviceAccountName; then the other
names the chart derives (the lock key, the token Secret, the metrics Service and its series).
The rest lives in its own partial (helm loads every templates/_*.tpl):
  _pod.tpl         the pod template shared by the Deployment and the CronJob, and what a mode serves
  _containers.tpl  every container: lockwrap-install, app, the lockwrap sidecar, lockwrap-job
  _env.tpl         the timing lockwrap gets, its env (CONSUL_*, LOCKWRAP_*) and the Consul secret mounts
  _validate.tpl    the checks values.schema.json cannot express (arithmetic, derived key syntax)
Numbers in .Values are float64 in Helm: convert with `int` before comparing or printing.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "lockwrap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, cut at 63 characters (the DNS label limit). The release name alone is used
when it already contains the chart name.
*/}}
{{- define "lockwrap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version for the helm.sh/chart label. */}}
{{- define "lockwrap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "lockwrap.labels" -}}
helm.sh/chart: {{ include "lockwrap.chart" . }}
{{ include "lockwrap.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels: stable across upgrades, so never add version-like values here. */}}
{{- define "lockwrap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lockwrap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount the pods run as. */}}
{{- define "lockwrap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lockwrap.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The lock key: lockwrap.key, or service/<fullname>/leader. */}}
{{- define "lockwrap.key" -}}
{{- default (printf "service/%s/leader" (include "lockwrap.fullname" .)) .Values.lockwrap.key }}
{{- end }}

{{/* Name of the Secret with the Consul ACL token, or "" when there is none. */}}
{{- define "lockwrap.tokenSecretName" -}}
{{- if .Values.consul.token.existingSecret }}
{{- .Values.consul.token.existingSecret }}
{{- else if .Values.consul.token.create }}
{{- printf "%s-consul-token" (include "lockwrap.fullname" .) }}
{{- end }}
{{- end }}

{{/* Key of the token in that Secret. */}}
{{- define "lockwrap.tokenSecretKey" -}}
{{- if .Values.consul.token.existingSecret }}{{ .Values.consul.token.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* Name of the headless Service the ServiceMonitor scrapes (every replica, Ready or not). */}}
{{- define "lockwrap.metricsServiceName" -}}
{{- printf "%s-metrics" (include "lockwrap.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* PromQL label matchers of this release's lockwrap series (see metrics.prometheusRule.selector). */}}
{{- define "lockwrap.metricsSelector" -}}
{{- default (printf "namespace=%q, job=%q" .Release.Namespace (include "lockwrap.metricsServiceName" .)) .Values.metrics.prometheusRule.selector }}
{{- end }}
