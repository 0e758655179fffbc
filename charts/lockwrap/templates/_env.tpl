{{/*
What every process running lockwrap is given: the timing settings, the env (CONSUL_*, LOCKWRAP_*) and
the Secret volumes and mounts holding the Consul TLS files and token the env points to.
*/}}

{{/*
The timing settings lockwrap gets: the values, or the fast-failover preset, with the takeover
delay defaulted as lockwrap does: max(kill grace + 1 s, kill grace + 3 s − lock-delay), the least
that covers a forced unlock and a node force-left under a holder cut off from its agent
(docs/timing.md). One place, used by the env and the checks.
*/}}
{{- define "lockwrap.timing" -}}
{{- $lw := .Values.lockwrap }}
{{- if $lw.fastFailover }}
sessionChecks: none
healthCheckTTL: 2
lockDelay: 0
killGrace: 1
takeoverDelay: 4
{{- else }}
sessionChecks: {{ $lw.sessionChecks | quote }}
healthCheckTTL: {{ int $lw.healthCheckTTLSeconds }}
lockDelay: {{ int $lw.lockDelaySeconds }}
killGrace: {{ int $lw.killGraceSeconds }}
takeoverDelay: {{ if kindIs "invalid" $lw.takeoverDelaySeconds }}{{ max (add (int $lw.killGraceSeconds) 1) (sub (add (int $lw.killGraceSeconds) 3) (int $lw.lockDelaySeconds)) }}{{ else }}{{ int $lw.takeoverDelaySeconds }}{{ end }}
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
{{- with .Values.consul.namespace }}
- name: CONSUL_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.consul.partition }}
- name: CONSUL_PARTITION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.consul.httpAuth.existingSecret }}
- name: CONSUL_HTTP_AUTH
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.consul.httpAuth.key | quote }}
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

{{/* The node directory holding the agent's unix socket, when consul.address is unix:// and the
chart mounts it (consul.mountSocketFromHost); empty otherwise. */}}
{{- define "lockwrap.consulSocketDir" -}}
{{- $addr := .Values.consul.address | default "" }}
{{- if and (hasPrefix "unix://" $addr) .Values.consul.mountSocketFromHost }}
{{- dir (trimPrefix "unix://" $addr) }}
{{- end }}
{{- end }}

{{/* Volumes holding the Consul TLS files, the token and the agent's socket, when configured. */}}
{{- define "lockwrap.consulVolumes" -}}
{{- with include "lockwrap.consulSocketDir" . }}
- name: consul-socket
  hostPath:
    path: {{ . }}
    type: Directory
{{- end }}
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
{{- with include "lockwrap.consulSocketDir" . }}
- name: consul-socket
  mountPath: {{ . }}
  readOnly: true
{{- end }}
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
