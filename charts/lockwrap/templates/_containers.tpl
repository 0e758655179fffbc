{{/*
The containers of the pod: lockwrap-install (copies the binary), app (wrapped by `lockwrap run` in
wrapper mode), the lockwrap sidecar and the init-mode lockwrap-job; with the pieces they share
(image references, lockwrap's flags, probes on lockwrap's HTTP port). Their env is in _env.tpl.
*/}}

{{/* The lockwrap image reference (the repository is required: lockwrap.validate). */}}
{{- define "lockwrap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
An image reference from (list WHAT REPOSITORY TAG): `repo:tag`, or the repository alone when it
carries its own tag or digest. No default tag: lockwrap.validate refuses a missing one.
*/}}
{{- define "lockwrap.imageRef" -}}
{{- $repo := index . 1 | toString }}{{ $tag := index . 2 | default "" | toString }}
{{- if $tag }}{{ printf "%s:%s" $repo $tag }}{{ else }}{{ $repo }}{{ end }}
{{- end }}

{{/* The application image reference. */}}
{{- define "lockwrap.appImage" -}}
{{- include "lockwrap.imageRef" (list "app.image" .Values.app.image.repository .Values.app.image.tag) }}
{{- end }}

{{/* lockwrap's HTTP listen address (HOST:PORT). */}}
{{- define "lockwrap.httpAddr" -}}
{{- printf "%s:%d" .Values.lockwrap.httpBindAddress (int .Values.lockwrap.httpPort) }}
{{- end }}

{{/* Flags shared by `lockwrap run` and `lockwrap sidecar`: verbosity, hooks, extra args. */}}
{{- define "lockwrap.commonArgs" -}}
{{- /* lockwrap's -v count: 0 warn, 1 info, 2 debug, 3 trace (src/logging.rs). */}}
{{- with int .Values.lockwrap.verbosity }}
- -{{ repeat . "v" }}
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

{{/* Container securityContext of the app and the init-mode job: app.securityContext only, so the
app keeps its image's user and filesystem; the chart's securityContext is lockwrap's own. */}}
{{- define "lockwrap.appSecurityContext" -}}
{{- with .Values.app.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
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
    {{- /* A run that finds the lock taken exits 0: a skipped run is not a failed Job (README, "Exit codes"). */}}
    - --non-blocking
    - --locked-exit-code
    - "0"
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
  {{- else if and $http (eq .Values.lockwrap.readiness "holder") }}
  # Ready only while this replica holds the lock: the Service sends traffic to the holder alone.
  readinessProbe:
    {{- include "lockwrap.httpProbe" (list . "/readyz" .Values.lockwrap.probes.readiness) | nindent 4 }}
  {{- else if and $http (eq $mode "wrapper") }}
  # Ready while lockwrap runs with a healthy session, holding the lock or standing by: rollouts finish.
  readinessProbe:
    {{- include "lockwrap.httpProbe" (list . "/healthz" .Values.lockwrap.probes.readiness) | nindent 4 }}
  {{- end }}
  {{- if .Values.app.livenessProbe }}
  livenessProbe:
    {{- toYaml .Values.app.livenessProbe | nindent 4 }}
  {{- else if and $http (eq $mode "wrapper") }}
  livenessProbe:
    {{- include "lockwrap.httpProbe" (list . "/healthz" .Values.lockwrap.probes.liveness) | nindent 4 }}
  {{- end }}
  {{- with include "lockwrap.appSecurityContext" . | trim }}{{ . | nindent 2 }}{{ end }}
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
  image: {{ include "lockwrap.imageRef" (list "initJob.image" (default .Values.app.image.repository $img.repository) (ternary $img.tag (default .Values.app.image.tag $img.tag) (not (empty $img.repository)))) }}
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
  {{- with include "lockwrap.appSecurityContext" . | trim }}{{ . | nindent 2 }}{{ end }}
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
