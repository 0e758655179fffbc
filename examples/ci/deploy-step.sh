#!/usr/bin/env bash
# CI deploy step serialised by a Consul lock: however many pipelines (branches, re-runs, runners)
# deploy to the same environment, one deploys at a time and the others queue.
#
#   DEPLOY_ENV=production DEPLOY_CMD='./deploy.sh production' examples/ci/deploy-step.sh
#
# Configuration, all from the environment (CI secrets/variables):
#   CONSUL_HTTP_ADDR        Consul address, e.g. https://consul.example.internal:8501 (required)
#   CONSUL_HTTP_TOKEN_FILE  or CONSUL_HTTP_TOKEN: ACL token with the rules of the README's "ACL rules":
#                           key "<key>" write, session "<node>" write, session_prefix "" read
#   CONSUL_CACERT           CA bundle for a private Consul CA (optional)
#   DEPLOY_ENV              environment name (default: staging); the lock key is deploy/<env>
#   DEPLOY_LOCK_KEY         override the key
#   DEPLOY_CMD              shell string to run while holding the lock (default: ./deploy.sh <env>)
#   DEPLOY_LOCK_TIMEOUT     how long to queue before failing the job (default: 30m)
#   LOCKWRAP                path of the lockwrap binary (default: lockwrap on PATH)
#
# `lockwrap execute KEY 'SHELL STRING'` runs the string with /bin/sh -c only while the lock is held,
# releases it when the command ends, and exits with the command's code. If the CI job is cancelled
# (SIGTERM), lockwrap forwards the signal, waits --kill-grace, and releases the lock.
set -euo pipefail

: "${CONSUL_HTTP_ADDR:?set CONSUL_HTTP_ADDR to the Consul HTTP API address}"
env_name=${DEPLOY_ENV:-staging}
key=${DEPLOY_LOCK_KEY:-deploy/$env_name}
cmd=${DEPLOY_CMD:-./deploy.sh $env_name}
lockwrap=${LOCKWRAP:-lockwrap}

# Who holds the lock is visible to the waiting jobs (lockwrap logs the holder every 30 s) and to
# `lockwrap status deploy/<env>`: record the pipeline in the lock's metadata. Quotes and backslashes
# are dropped so the JSON stays valid whatever the CI puts in these variables.
clean() { printf '%s' "${1:-}" | tr -d '"\\'; }
run_id=$(clean "${GITHUB_RUN_ID:-${CI_PIPELINE_ID:-${BUILD_ID:-local}}}")
commit=$(clean "${GITHUB_SHA:-${CI_COMMIT_SHA:-${GIT_COMMIT:-unknown}}}")
actor=$(clean "${GITHUB_ACTOR:-${GITLAB_USER_LOGIN:-${USER:-ci}}}")
metadata="{\"pipeline\":\"$run_id\",\"commit\":\"$commit\",\"actor\":\"$actor\",\"env\":\"$(clean "$env_name")\"}"

set +e
# --session-ttl 30s: a runner that dies loses the lock within ~1 min (2×TTL, then lock-delay).
# --lock-delay 15s: after such a crash, nobody deploys for 15 s while the dead job's leftovers settle.
# --kill-grace 60s: a cancelled deploy gets a minute to stop cleanly before SIGKILL.
# --session-checks none: CI runners talk to a remote Consul; the renewed TTL proves they are alive.
"$lockwrap" execute \
  --timeout "${DEPLOY_LOCK_TIMEOUT:-30m}" \
  --session-ttl 30s \
  --lock-delay 15s \
  --kill-grace 60s \
  --session-checks none \
  --metadata "$metadata" \
  "$key" "$cmd"
rc=$?
set -e

case $rc in
  0) echo "deploy-step: $key: deployed" >&2 ;;
  5) echo "deploy-step: $key: gave up after ${DEPLOY_LOCK_TIMEOUT:-30m} waiting; holder:" >&2
     "$lockwrap" status "$key" >&2 || true ;;
  101) echo "deploy-step: $key: lost the lock mid-deploy (Consul unreachable?); the deploy was stopped" >&2 ;;
  4) echo "deploy-step: $key: Consul ACL denied: the token needs key \"$key\" write, session \"<agent node>\" write and session_prefix \"\" read (README, \"ACL rules\")" >&2 ;;
  8) echo "deploy-step: $key: Consul unreachable at $CONSUL_HTTP_ADDR" >&2 ;;
  *) echo "deploy-step: $key: deploy command failed with exit code $rc" >&2 ;;
esac
exit $rc
