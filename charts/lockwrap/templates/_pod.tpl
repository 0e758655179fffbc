{{/*
The pod of every workload, and what the workload/mode combination serves. The containers are in
_containers.tpl, the Consul env and secret volumes in _env.tpl.
*/}}

{{/* Whether lockwrap serves HTTP: wrapper and sidecar modes of a Deployment. */}}
{{- define "lockwrap.servesHTTP" -}}
{{- if and (eq .Values.workload "deployment") (has .Values.mode (list "wrapper" "sidecar")) }}true{{ end }}
{{- end }}

{{/*
"true" when pod readiness follows /readyz, i.e. only the lock holder is Ready: lockwrap.readiness
`holder` in wrapper or sidecar mode of a Deployment (unless --ready-always or an own probe).
*/}}
{{- define "lockwrap.readinessGated" -}}
{{- if and (include "lockwrap.servesHTTP" .) (eq .Values.lockwrap.readiness "holder") (not .Values.lockwrap.readyAlways) (not .Values.app.readinessProbe) }}true{{ end }}
{{- end }}

{{/* The pod template (metadata + spec) shared by the Deployment and the CronJob. */}}
{{- define "lockwrap.podTemplate" -}}
{{- $mode := .Values.mode }}
{{- $cron := eq .Values.workload "cronjob" }}
{{- $http := include "lockwrap.servesHTTP" . -}}
metadata:
  labels:
    {{- include "lockwrap.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $ann := dict }}
  {{- if and $http .Values.metrics.podAnnotations }}
  {{- $_ := set $ann "prometheus.io/scrape" "true" }}
  {{- $_ := set $ann "prometheus.io/port" (toString (int .Values.lockwrap.httpPort)) }}
  {{- $_ := set $ann "prometheus.io/path" "/metrics" }}
  {{- end }}
  {{- if and .Values.consul.token.create (not .Values.consul.token.existingSecret) }}
  {{- $_ := set $ann "checksum/consul-token" (sha256sum (toString .Values.consul.token.value)) }}
  {{- end }}
  {{- $ann = merge (deepCopy (default dict .Values.podAnnotations)) $ann }}
  {{- with $ann }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "lockwrap.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- if $cron }}
  restartPolicy: Never
  {{- end }}
  terminationGracePeriodSeconds: {{ int .Values.terminationGracePeriodSeconds }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if and (not $cron) (eq .Values.podAntiAffinity "soft") }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "lockwrap.selectorLabels" . | nindent 16 }}
  {{- else if and (not $cron) (eq .Values.podAntiAffinity "hard") }}
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "lockwrap.selectorLabels" . | nindent 14 }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if or (ne $mode "sidecar") .Values.sidecar.native }}
  initContainers:
    {{- if ne $mode "sidecar" }}
    {{- include "lockwrap.installContainer" . | nindent 4 }}
    {{- end }}
    {{- if eq $mode "init" }}
    {{- include "lockwrap.initJobContainer" . | nindent 4 }}
    {{- end }}
    {{- if eq $mode "sidecar" }}
    {{- include "lockwrap.sidecarContainer" . | nindent 4 }}
    {{- end }}
  {{- end }}
  containers:
    {{- include "lockwrap.appContainer" . | nindent 4 }}
    {{- if and (eq $mode "sidecar") (not .Values.sidecar.native) }}
    {{- include "lockwrap.sidecarContainer" . | nindent 4 }}
    {{- end }}
  volumes:
    {{- if ne $mode "sidecar" }}
    # The lockwrap binary, copied here by the lockwrap-install init container.
    - name: lockwrap-bin
      emptyDir:
        sizeLimit: 64Mi
    {{- else }}
    # lockwrap's status file, written by the sidecar and read by the app.
    - name: lockwrap-status
      emptyDir:
        medium: Memory
        sizeLimit: 1Mi
    {{- end }}
    {{- with include "lockwrap.consulVolumes" . | trim }}{{ . | nindent 4 }}{{ end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
The PodDisruptionBudget's maxUnavailable as YAML `value: N` (or a percentage string): the value
given, or automatic. Only Ready pods count as healthy, so when only the holder is Ready anything
below replicas would block its eviction for ever: automatic is then replicas, else 1.
*/}}
{{- define "lockwrap.pdbMaxUnavailable" -}}
{{- $max := .Values.podDisruptionBudget.maxUnavailable }}
{{- if or (kindIs "invalid" $max) (eq (toString $max) "") }}
{{- $max = ternary (int .Values.replicas) 1 (eq (include "lockwrap.readinessGated" .) "true") }}
{{- end }}
value: {{ if kindIs "string" $max }}{{ $max | quote }}{{ else }}{{ int $max }}{{ end }}
{{- end }}
