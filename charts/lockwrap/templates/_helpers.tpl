{{/*
Helpers of the lockwrap chart. Names follow `helm create`: lockwrap.name, lockwrap.fullname,
lockwrap.chart, lockwrap.labels, lockwrap.selectorLabels, lockwrap.serviceAccountName; the rest build
the pieces every mode shares (Consul env and secret mounts, the lockwrap command line, the pod).
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

{{/* The lockwrap image reference. */}}
{{- define "lockwrap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* The application image reference. */}}
{{- define "lockwrap.appImage" -}}
{{- printf "%s:%s" .Values.app.image.repository (.Values.app.image.tag | toString) }}
{{- end }}

{{/* The lock key: lockwrap.key, or service/<fullname>/leader. */}}
{{- define "lockwrap.key" -}}
{{- default (printf "service/%s/leader" (include "lockwrap.fullname" .)) .Values.lockwrap.key }}
{{- end }}

{{/* lockwrap's HTTP listen address (HOST:PORT). */}}
{{- define "lockwrap.httpAddr" -}}
{{- printf "%s:%d" .Values.lockwrap.httpBindAddress (int .Values.lockwrap.httpPort) }}
{{- end }}

{{/* Whether lockwrap serves HTTP: wrapper and sidecar modes of a Deployment. */}}
{{- define "lockwrap.servesHTTP" -}}
{{- if and (eq .Values.workload "deployment") (has .Values.mode (list "wrapper" "sidecar")) }}true{{ end }}
{{- end }}

{{/*
"true" when pod readiness follows /readyz, i.e. only the lock holder is Ready: wrapper mode of a
Deployment, or sidecar mode with sidecar.gateReadiness (unless --ready-always or an own probe).
*/}}
{{- define "lockwrap.readinessGated" -}}
{{- if and (eq .Values.workload "deployment") (not .Values.lockwrap.readyAlways) (not .Values.app.readinessProbe) }}
{{- if or (eq .Values.mode "wrapper") (and (eq .Values.mode "sidecar") .Values.sidecar.gateReadiness) }}true{{ end }}
{{- end }}
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

{{/*
Checks that values.schema.json cannot express. Included by every workload template, so a bad
combination fails `helm install` / `helm template` with a message saying what to change.
*/}}
{{- define "lockwrap.validate" -}}
{{- $ := . }}
{{- $_ := required "consul.address is required: the Consul HTTP API address, e.g. consul-server.consul.svc:8500 or https://consul.example:8501" .Values.consul.address }}
{{- if not (has .Values.mode (list "wrapper" "sidecar" "init")) }}
{{- fail (printf "mode must be wrapper, sidecar or init (got %q)" (toString .Values.mode)) }}
{{- end }}
{{- if not (has .Values.workload (list "deployment" "cronjob")) }}
{{- fail (printf "workload must be deployment or cronjob (got %q)" (toString .Values.workload)) }}
{{- end }}
{{- if and (eq .Values.workload "cronjob") (ne .Values.mode "wrapper") }}
{{- fail (printf "workload=cronjob needs mode=wrapper (got mode=%s): every scheduled run is wrapped by lockwrap run" .Values.mode) }}
{{- end }}
{{- if and (eq .Values.mode "wrapper") (not .Values.app.command) }}
{{- fail "app.command is required in wrapper mode: lockwrap replaces the container's command and cannot see the image's ENTRYPOINT, so give the full argv of the app" }}
{{- end }}
{{- if and (eq .Values.mode "init") (not .Values.initJob.command) }}
{{- fail "initJob.command is required in init mode: the job lockwrap runs under the lock before the app starts" }}
{{- end }}
{{- $key := include "lockwrap.key" . }}
{{- if or (hasPrefix "/" $key) (contains "//" $key) (hasSuffix "/" $key) }}
{{- fail (printf "lockwrap.key %q is not a valid key: no leading or trailing '/', no '//'" $key) }}
{{- end }}
{{- range splitList "/" $key }}
{{- if or (eq . ".") (eq . "..") }}
{{- fail (printf "lockwrap.key %q is not a valid key: no '.' or '..' segments" $key) }}
{{- end }}
{{- end }}
{{- $t := include "lockwrap.timing" . | fromYaml }}
{{- $grace := int $t.killGrace }}
{{- if not .Values.lockwrap.unsafeAllowOverlap }}
{{- /* The start-up checks of lockwrap's timing model (docs/timing.md), so a bad setting fails the render, not the pod. */}}
{{- if lt (int $t.takeoverDelay) (add $grace 1) }}
{{- fail (printf "lockwrap.takeoverDelaySeconds (%d) must be at least killGraceSeconds + 1 (%d): after a forced unlock the next holder could start while this app is still stopping (docs/timing.md); or set lockwrap.unsafeAllowOverlap" (int $t.takeoverDelay) (add $grace 1)) }}
{{- end }}
{{- if and (ne $t.sessionChecks "none") (lt (add (int $t.lockDelay) (int $t.takeoverDelay)) (add $grace 3)) }}
{{- fail (printf "lockwrap.sessionChecks %q can end the session at any moment: lockDelaySeconds + takeover delay (%d) must be at least killGraceSeconds + 3 (%d) (docs/timing.md); or use sessionChecks: none" $t.sessionChecks (add (int $t.lockDelay) (int $t.takeoverDelay)) (add $grace 3)) }}
{{- end }}
{{- if and (gt (int $t.healthCheckTTL) 0) (lt (add (int $t.healthCheckTTL) (int $t.lockDelay) (int $t.takeoverDelay)) (add $grace 3)) }}
{{- fail (printf "lockwrap.healthCheckTTLSeconds + lockDelaySeconds + takeover delay (%d) must be at least killGraceSeconds + 3 (%d) (docs/timing.md)" (add (int $t.healthCheckTTL) (int $t.lockDelay) (int $t.takeoverDelay)) (add $grace 3)) }}
{{- end }}
{{- end }}
{{- $need := add $grace (int .Values.lockwrap.releaseAllowanceSeconds) }}
{{- $tgps := int .Values.terminationGracePeriodSeconds }}
{{- if le $tgps $need }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lockwrap.killGraceSeconds + lockwrap.releaseAllowanceSeconds (%d + %d = %d), or Kubernetes kills lockwrap before it has stopped the app and released the lock; set it to at least %d" $tgps $grace (int .Values.lockwrap.releaseAllowanceSeconds) $need (add1 $need)) }}
{{- end }}
{{- if and .Values.consul.token.create (not .Values.consul.token.existingSecret) (not .Values.consul.token.value) }}
{{- fail "consul.token.create=true needs consul.token.value (or use consul.token.existingSecret)" }}
{{- end }}
{{- if and .Values.consul.tls.clientAuth (not .Values.consul.tls.existingSecret) }}
{{- fail "consul.tls.clientAuth=true needs consul.tls.existingSecret holding the client certificate and key" }}
{{- end }}
{{- if and .Values.consul.tls.existingSecret (not .Values.consul.tls.enabled) }}
{{- fail "consul.tls.existingSecret is set but consul.tls.enabled=false" }}
{{- end }}
{{- end }}

{{/*
The timing settings lockwrap gets: the values, or the fast-failover preset, with the takeover
delay defaulted as lockwrap does (kill grace + 1 s). One place, used by the env and the checks.
*/}}
{{- define "lockwrap.timing" -}}
{{- $lw := .Values.lockwrap }}
{{- if $lw.fastFailover }}
sessionChecks: none
healthCheckTTL: 2
lockDelay: 0
killGrace: 1
takeoverDelay: 2
{{- else }}
sessionChecks: {{ $lw.sessionChecks | quote }}
healthCheckTTL: {{ int $lw.healthCheckTTLSeconds }}
lockDelay: {{ int $lw.lockDelaySeconds }}
killGrace: {{ int $lw.killGraceSeconds }}
takeoverDelay: {{ if kindIs "invalid" $lw.takeoverDelaySeconds }}{{ add (int $lw.killGraceSeconds) 1 }}{{ else }}{{ int $lw.takeoverDelaySeconds }}{{ end }}
{{- end }}
{{- end }}

{{/*
Environment of every process running lockwrap: the Consul connection (CONSUL_*) and the lock
settings (LOCKWRAP_*), as lockwrap reads them (docs/cli-surface.md). The token is a mounted file.
*/}}
{{- define "lockwrap.env" -}}
- name: CONSUL_HTTP_ADDR
  value: {{ .Values.consul.address | quote }}
{{- if and .Values.consul.tls.enabled (not (regexMatch "^https?://" .Values.consul.address)) }}
- name: CONSUL_HTTP_SSL
  value: "true"
{{- end }}
{{- with .Values.consul.datacenter }}
- name: CONSUL_DATACENTER
  value: {{ . | quote }}
{{- end }}
{{- if .Values.consul.tls.existingSecret }}
- name: CONSUL_CACERT
  value: {{ printf "/var/run/secrets/lockwrap/consul-tls/%s" .Values.consul.tls.caKey | quote }}
{{- if .Values.consul.tls.clientAuth }}
- name: CONSUL_CLIENT_CERT
  value: {{ printf "/var/run/secrets/lockwrap/consul-tls/%s" .Values.consul.tls.certKey | quote }}
- name: CONSUL_CLIENT_KEY
  value: {{ printf "/var/run/secrets/lockwrap/consul-tls/%s" .Values.consul.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- with .Values.consul.tls.serverName }}
- name: CONSUL_TLS_SERVER_NAME
  value: {{ . | quote }}
{{- end }}
{{- if and .Values.consul.tls.enabled (not .Values.consul.tls.verify) }}
- name: CONSUL_HTTP_SSL_VERIFY
  value: "false"
{{- end }}
{{- if include "lockwrap.tokenSecretName" . }}
- name: CONSUL_HTTP_TOKEN_FILE
  value: /var/run/secrets/lockwrap/consul-token/token
{{- end }}
{{- $t := include "lockwrap.timing" . | fromYaml }}
- name: LOCKWRAP_SESSION_TTL
  value: {{ printf "%ds" (int .Values.lockwrap.sessionTTLSeconds) | quote }}
- name: LOCKWRAP_LOCK_DELAY
  value: {{ printf "%ds" (int $t.lockDelay) | quote }}
- name: LOCKWRAP_KILL_GRACE
  value: {{ printf "%ds" (int $t.killGrace) | quote }}
- name: LOCKWRAP_TAKEOVER_DELAY
  value: {{ printf "%ds" (int $t.takeoverDelay) | quote }}
{{- /* "none": the renewed TTL proves liveness; a gossip flap cannot end a healthy hold (docs/timing.md). */}}
- name: LOCKWRAP_SESSION_CHECKS
  value: {{ $t.sessionChecks | quote }}
{{- if gt (int $t.healthCheckTTL) 0 }}
- name: LOCKWRAP_HEALTH_CHECK_TTL
  value: {{ printf "%ds" (int $t.healthCheckTTL) | quote }}
{{- end }}
{{- if .Values.lockwrap.unsafeAllowOverlap }}
- name: LOCKWRAP_UNSAFE_ALLOW_OVERLAP
  value: "true"
{{- end }}
- name: LOCKWRAP_LAYOUT
  value: {{ .Values.lockwrap.layout | quote }}
- name: LOCKWRAP_LOG_FORMAT
  value: {{ .Values.lockwrap.logFormat | quote }}
- name: LOCKWRAP_HOOK_TIMEOUT
  value: {{ printf "%ds" (int .Values.lockwrap.hooks.timeoutSeconds) | quote }}
{{- with .Values.lockwrap.webhook }}
- name: LOCKWRAP_WEBHOOK
  value: {{ . | quote }}
{{- end }}
{{- /* Who holds the lock, for the holder info and logs (the hostname is the pod name already). */}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- with .Values.lockwrap.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Flags shared by `lockwrap run` and `lockwrap sidecar`: verbosity, hooks, extra args. */}}
{{- define "lockwrap.commonArgs" -}}
{{- if eq (int .Values.lockwrap.verbosity) 1 }}
- -v
{{- else if eq (int .Values.lockwrap.verbosity) 2 }}
- -vv
{{- end }}
{{- range .Values.lockwrap.hooks.onAcquired }}
- {{ printf "--on-acquired=%s" . | quote }}
{{- end }}
{{- range .Values.lockwrap.hooks.onLost }}
- {{ printf "--on-lost=%s" . | quote }}
{{- end }}
{{- range .Values.lockwrap.hooks.onReleased }}
- {{ printf "--on-released=%s" . | quote }}
{{- end }}
{{- range .Values.lockwrap.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Volumes holding the Consul TLS files and the token, when configured. */}}
{{- define "lockwrap.consulVolumes" -}}
{{- if .Values.consul.tls.existingSecret }}
- name: consul-tls
  secret:
    secretName: {{ .Values.consul.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- with include "lockwrap.tokenSecretName" . }}
- name: consul-token
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ include "lockwrap.tokenSecretKey" $ }}
        path: token
{{- end }}
{{- end }}

{{/* Mounts of those volumes, in every container that talks to Consul. */}}
{{- define "lockwrap.consulVolumeMounts" -}}
{{- if .Values.consul.tls.existingSecret }}
- name: consul-tls
  mountPath: /var/run/secrets/lockwrap/consul-tls
  readOnly: true
{{- end }}
{{- if include "lockwrap.tokenSecretName" . }}
- name: consul-token
  mountPath: /var/run/secrets/lockwrap/consul-token
  readOnly: true
{{- end }}
{{- end }}

{{/* The init container that copies the lockwrap binary into the shared lockwrap-bin volume. */}}
{{- define "lockwrap.installContainer" -}}
- name: lockwrap-install
  image: {{ include "lockwrap.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    {{- range .Values.lockwrap.copyCommand }}
    - {{ . | quote }}
    {{- end }}
    - /shared/lockwrap
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.lockwrap.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: lockwrap-bin
      mountPath: /shared
{{- end }}

{{/* An httpGet probe on lockwrap's port; call with (list $ "/path" $timing). */}}
{{- define "lockwrap.httpProbe" -}}
{{- $root := index . 0 -}}
httpGet:
  path: {{ index . 1 }}
  port: {{ int $root.Values.lockwrap.httpPort }}
{{- with index . 2 }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Container securityContext of the app: app.securityContext or the chart-wide one. */}}
{{- define "lockwrap.appSecurityContext" -}}
{{- toYaml (default .Values.securityContext .Values.app.securityContext) }}
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

{{/* The application container; in wrapper mode its command is `lockwrap run … -- app`. */}}
{{- define "lockwrap.appContainer" -}}
{{- $mode := .Values.mode }}
{{- $cron := eq .Values.workload "cronjob" }}
{{- $http := include "lockwrap.servesHTTP" . -}}
- name: app
  image: {{ include "lockwrap.appImage" . }}
  imagePullPolicy: {{ .Values.app.image.pullPolicy }}
  {{- if eq $mode "wrapper" }}
  command:
    - /lockwrap/lockwrap
    - run
    - --key
    - {{ include "lockwrap.key" . | quote }}
    {{- if $http }}
    - --http-addr
    - {{ include "lockwrap.httpAddr" . | quote }}
    {{- if .Values.lockwrap.readyAlways }}
    - --ready-always
    {{- end }}
    {{- end }}
    {{- if and $cron (eq .Values.cronjob.onLocked "skip") }}
    - --non-blocking
    {{- else if $cron }}
    - --timeout
    - {{ printf "%ds" (int .Values.cronjob.waitTimeoutSeconds) | quote }}
    {{- end }}
    {{- with include "lockwrap.commonArgs" . | trim }}{{ . | nindent 4 }}{{ end }}
    - --
    {{- range .Values.app.command }}
    - {{ . | quote }}
    {{- end }}
    {{- range .Values.app.args }}
    - {{ . | quote }}
    {{- end }}
  {{- else }}
  {{- with .Values.app.command }}
  command:
    {{- range . }}
    - {{ . | quote }}
    {{- end }}
  {{- end }}
  {{- with .Values.app.args }}
  args:
    {{- range . }}
    - {{ . | quote }}
    {{- end }}
  {{- end }}
  {{- end }}
  {{- if or (eq $mode "wrapper") .Values.app.env }}
  env:
    {{- if eq $mode "wrapper" }}
    {{- include "lockwrap.env" . | nindent 4 }}
    {{- end }}
    {{- with .Values.app.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with .Values.app.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if or .Values.app.port (and $http (eq $mode "wrapper")) }}
  ports:
    {{- if .Values.app.port }}
    - name: {{ .Values.app.portName }}
      containerPort: {{ int .Values.app.port }}
      protocol: TCP
    {{- end }}
    {{- if and $http (eq $mode "wrapper") }}
    - name: lockwrap
      containerPort: {{ int .Values.lockwrap.httpPort }}
      protocol: TCP
    {{- end }}
  {{- end }}
  {{- if .Values.app.startupProbe }}
  startupProbe:
    {{- toYaml .Values.app.startupProbe | nindent 4 }}
  {{- end }}
  {{- if .Values.app.readinessProbe }}
  readinessProbe:
    {{- toYaml .Values.app.readinessProbe | nindent 4 }}
  {{- else if and $http (or (eq $mode "wrapper") .Values.sidecar.gateReadiness) }}
  # Ready only while this replica holds the lock: the Service sends traffic to the holder alone.
  readinessProbe:
    {{- include "lockwrap.httpProbe" (list . "/readyz" .Values.lockwrap.probes.readiness) | nindent 4 }}
  {{- end }}
  {{- if .Values.app.livenessProbe }}
  livenessProbe:
    {{- toYaml .Values.app.livenessProbe | nindent 4 }}
  {{- else if and $http (eq $mode "wrapper") }}
  livenessProbe:
    {{- include "lockwrap.httpProbe" (list . "/healthz" .Values.lockwrap.probes.liveness) | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "lockwrap.appSecurityContext" . | nindent 4 }}
  {{- with .Values.app.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $mounts := or (eq $mode "wrapper") (eq $mode "sidecar") .Values.extraVolumeMounts }}
  {{- if $mounts }}
  volumeMounts:
    {{- if eq $mode "wrapper" }}
    - name: lockwrap-bin
      mountPath: /lockwrap
      readOnly: true
    {{- with include "lockwrap.consulVolumeMounts" . | trim }}{{ . | nindent 4 }}{{ end }}
    {{- else if eq $mode "sidecar" }}
    - name: lockwrap-status
      mountPath: /var/run/lockwrap
      readOnly: true
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* The lockwrap sidecar: campaigns for the lock, serves /leader, writes the status file. */}}
{{- define "lockwrap.sidecarContainer" -}}
- name: lockwrap
  image: {{ include "lockwrap.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.sidecar.native }}
  # A native sidecar: started before the app, stopped after it.
  restartPolicy: Always
  {{- end }}
  args:
    - sidecar
    - --key
    - {{ include "lockwrap.key" . | quote }}
    - --http-addr
    - {{ include "lockwrap.httpAddr" . | quote }}
    - --status-file
    - /var/run/lockwrap/status.json
    {{- if .Values.lockwrap.readyAlways }}
    - --ready-always
    {{- end }}
    {{- if .Values.sidecar.exitOnLoss }}
    - --exit-on-loss
    {{- end }}
    {{- with include "lockwrap.commonArgs" . | trim }}{{ . | nindent 4 }}{{ end }}
  env:
    {{- include "lockwrap.env" . | nindent 4 }}
  ports:
    - name: lockwrap
      containerPort: {{ int .Values.lockwrap.httpPort }}
      protocol: TCP
  {{- if .Values.sidecar.native }}
  # The app starts once lockwrap is up and has a Consul session.
  startupProbe:
    {{- include "lockwrap.httpProbe" (list . "/healthz" (dict "periodSeconds" 1 "failureThreshold" 60)) | nindent 4 }}
  {{- end }}
  # The sidecar itself is ready while it runs; leadership is in /leader (and /readyz).
  readinessProbe:
    {{- include "lockwrap.httpProbe" (list . "/healthz" (dict "periodSeconds" 5)) | nindent 4 }}
  livenessProbe:
    {{- include "lockwrap.httpProbe" (list . "/healthz" .Values.lockwrap.probes.liveness) | nindent 4 }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.lockwrap.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: lockwrap-status
      mountPath: /var/run/lockwrap
    {{- with include "lockwrap.consulVolumeMounts" . | trim }}{{ . | nindent 4 }}{{ end }}
{{- end }}

{{/* Init mode: the job, run under the lock by the copied lockwrap binary. */}}
{{- define "lockwrap.initJobContainer" -}}
{{- $img := .Values.initJob.image -}}
- name: lockwrap-job
  image: {{ printf "%s:%s" (default .Values.app.image.repository $img.repository) (default (toString .Values.app.image.tag) (toString $img.tag)) }}
  imagePullPolicy: {{ default .Values.app.image.pullPolicy $img.pullPolicy }}
  command:
    - /lockwrap/lockwrap
    - run
    - --key
    - {{ include "lockwrap.key" . | quote }}
    {{- if gt (int .Values.initJob.timeoutSeconds) 0 }}
    - --timeout
    - {{ printf "%ds" (int .Values.initJob.timeoutSeconds) | quote }}
    {{- end }}
    {{- with include "lockwrap.commonArgs" . | trim }}{{ . | nindent 4 }}{{ end }}
    - --
    {{- range .Values.initJob.command }}
    - {{ . | quote }}
    {{- end }}
    {{- range .Values.initJob.args }}
    - {{ . | quote }}
    {{- end }}
  env:
    {{- include "lockwrap.env" . | nindent 4 }}
    {{- with .Values.initJob.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- include "lockwrap.appSecurityContext" . | nindent 4 }}
  {{- with .Values.initJob.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: lockwrap-bin
      mountPath: /lockwrap
      readOnly: true
    {{- with include "lockwrap.consulVolumeMounts" . | trim }}{{ . | nindent 4 }}{{ end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* Name of the headless Service the ServiceMonitor scrapes (every replica, Ready or not). */}}
{{- define "lockwrap.metricsServiceName" -}}
{{- printf "%s-metrics" (include "lockwrap.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* PromQL label matchers of this release's lockwrap series (see metrics.prometheusRule.selector). */}}
{{- define "lockwrap.metricsSelector" -}}
{{- default (printf "namespace=%q, job=%q" .Release.Namespace (include "lockwrap.metricsServiceName" .)) .Values.metrics.prometheusRule.selector }}
{{- end }}
