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
