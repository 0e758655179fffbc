{{/*
The checks values.schema.json cannot express, included by every template that renders a workload
or its Secret, so a bad setting fails `helm install` / `helm template` with a message saying what to
change. JSON schema (draft-07) compares a value with constants, not with other values: the schema
holds the required values and the cross-field rules (workload/mode combinations, what each mode
needs, consul.tls and consul.token settings that need each other, the ServiceMonitor's HTTP server);
here remain the syntax of the lock key as derived (lockwrap.key, or one built from fullname), the
image references (no default may stand in for your image), and the arithmetic between settings:
lockwrap's timing refusals, the pod's termination grace, the PodDisruptionBudget against readiness.
*/}}

{{/*
An image given as (list WHAT REPOSITORY TAG) must name a repository and, unless the repository
carries its own tag or digest (`repo:tag`, `repo@sha256:…`), a tag: a tag of another image must
never leak into yours.
*/}}
{{- define "lockwrap.validateImage" -}}
{{- $what := index . 0 }}{{ $repo := index . 1 | default "" | toString }}{{ $tag := index . 2 | default "" | toString }}
{{- if not $repo }}
{{- fail (printf "%s.repository is required: the image to run, e.g. ghcr.io/acme/billing" $what) }}
{{- end }}
{{- $ownTag := or (contains "@" $repo) (contains ":" (last (splitList "/" $repo))) }}
{{- if and $ownTag $tag }}
{{- fail (printf "%s.repository %q already carries a tag or digest: leave %s.tag empty" $what $repo $what) }}
{{- else if not (or $ownTag $tag) }}
{{- fail (printf "%s.tag is required with %s.repository %q: the chart has no default tag for your image" $what $what $repo) }}
{{- end }}
{{- end }}
{{- define "lockwrap.validate" -}}
{{- if not .Values.image.repository }}
{{- fail "image.repository is required: no public registry serves the lockwrap image; build it from the repository's Dockerfile, push it to your registry and set image.repository (docs/kubernetes.md, \"The image\")" }}
{{- end }}
{{- include "lockwrap.validateImage" (list "app.image" .Values.app.image.repository .Values.app.image.tag) }}
{{- $job := .Values.initJob.image }}
{{- if and (eq .Values.mode "init") (or $job.repository $job.tag) }}
{{- /* The job's own repository takes only its own tag; a tag alone goes with app.image.repository. */}}
{{- include "lockwrap.validateImage" (list "initJob.image" (default .Values.app.image.repository $job.repository) (ternary $job.tag (default .Values.app.image.tag $job.tag) (not (empty $job.repository)))) }}
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
{{- if lt (add (int $t.lockDelay) (int $t.takeoverDelay)) (add $grace 3) }}
{{- fail (printf "lockDelaySeconds + takeover delay (%d) must be at least killGraceSeconds + 3 (%d): a node force-left while its holder cannot reach its agent ends the session at any moment (docs/timing.md); raise lockwrap.takeoverDelaySeconds or lockwrap.lockDelaySeconds, or leave takeoverDelaySeconds empty" (add (int $t.lockDelay) (int $t.takeoverDelay)) (add $grace 3)) }}
{{- end }}
{{- if and (gt (int $t.healthCheckTTL) 0) (lt (add (int $t.healthCheckTTL) (int $t.lockDelay) (int $t.takeoverDelay)) (add $grace 3)) }}
{{- fail (printf "lockwrap.healthCheckTTLSeconds + lockDelaySeconds + takeover delay (%d) must be at least killGraceSeconds + 3 (%d) (docs/timing.md)" (add (int $t.healthCheckTTL) (int $t.lockDelay) (int $t.takeoverDelay)) (add $grace 3)) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.workload "deployment") (eq .Values.mode "wrapper") .Values.app.port (ne .Values.lockwrap.readiness "holder") (not .Values.app.readinessProbe) }}
{{- fail "app.port in wrapper mode needs lockwrap.readiness: holder: the app runs on the lock holder only, so with every replica Ready the Service would send traffic to standbys that refuse it. With holder, helm 4's default --wait and kubectl rollout status never see the rollout finish: use helm --wait=legacy (docs/kubernetes.md, \"Probes, readiness and rollouts\")" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (eq .Values.workload "deployment") (eq (include "lockwrap.readinessGated" .) "true") }}
{{- $max := include "lockwrap.pdbMaxUnavailable" . | fromYaml | dig "value" 1 }}
{{- $resolved := int $max }}
{{- if kindIs "string" $max }}
{{- /* Kubernetes rounds a percentage of maxUnavailable up. */}}
{{- $resolved = div (add (mul (int (trimSuffix "%" $max)) (int .Values.replicas)) 99) 100 }}
{{- end }}
{{- if lt (int $resolved) (int .Values.replicas) }}
{{- fail (printf "podDisruptionBudget.maxUnavailable %v is below replicas (%d) while only the holder is Ready (lockwrap.readiness: holder): Kubernetes counts only Ready pods as healthy, so the holder could never be evicted and node drains would hang. Leave it empty (the chart then uses replicas) or use lockwrap.readiness: running" $max (int .Values.replicas)) }}
{{- end }}
{{- end }}
{{- $need := add $grace (int .Values.lockwrap.releaseAllowanceSeconds) }}
{{- $tgps := int .Values.terminationGracePeriodSeconds }}
{{- if le $tgps $need }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lockwrap.killGraceSeconds + lockwrap.releaseAllowanceSeconds (%d + %d = %d), or Kubernetes kills lockwrap before it has stopped the app and released the lock; set it to at least %d" $tgps $grace (int .Values.lockwrap.releaseAllowanceSeconds) $need (add1 $need)) }}
{{- end }}
{{- end }}
