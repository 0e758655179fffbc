# Real Consul cluster tests (docs/performance.md, "On a real cluster"): 3 servers + 3 client agents
# on 127.0.N.11-13 / .21-23 (cluster slot N, 0 for cluster-test), each under its own uid, partitions
# with iptables (chain LWTEST<N> on lo). Needs root; skips with a message when iptables/setpriv
# cannot work. See kit/cluster.py.
#   make cluster-test     the issue's table as deterministic scenarios (~3 min); part of `make test`
#                         (CLUSTER_ARGS="--only NAME[,NAME]" runs some; --list names them)
#   make chaos-cluster    >= 1000 fault trials over every mode (kit/settings.py MODES:
#                         run, execute, sidecar, -n 2, --queue, --layout consul-lock, the library,
#                         mixed kill graces, escaping workers, stderr pipe) x the default and the
#                         fast-failover setting, on CLUSTER_CLUSTERS clusters side by side
#                         (127.0.N.x, N = 1..4; ~70 min) (CLUSTER_TRIALS, CLUSTER_BUDGET seconds per
#                         cluster, CLUSTER_SETTING default|fast|both, CLUSTER_MODES all|m1,m2)
#   make chaos-cluster-quick  ~10 trials, for development
CLUSTER_TRIALS ?= 1000
CLUSTER_BUDGET ?= 5400
CLUSTER_CLUSTERS ?= 4
CLUSTER_SETTING ?= both
CLUSTER_MODES ?= all
CLUSTER_ARGS ?=

.PHONY: cluster-test chaos-cluster chaos-cluster-quick cluster-lib-example

# the library contender (LockManager::execute) of the lib mode and lib-execute-takeover. Its own
# target dir: an example build unifies the dev-dependencies' features, so sharing target/ with
# `cargo build --release` would rebuild both every time.
LIB_EXAMPLE_TARGET ?= $(CURDIR)/target/lib-example
LOCKWRAP_LIB_EXAMPLE ?= $(LIB_EXAMPLE_TARGET)/release/examples/lib_execute
cluster-lib-example:
	CARGO_TARGET_DIR=$(LIB_EXAMPLE_TARGET) $(CARGO) build --release --example lib_execute
TEST_TARGETS += cluster-test

cluster-test: consul build cluster-lib-example
	LOCKWRAP_BIN=$(LOCKWRAP_BIN) LOCKWRAP_LIB_EXAMPLE=$(LOCKWRAP_LIB_EXAMPLE) CONSUL_BIN="$$(scripts/ensure-consul.sh)" \
	  $(PYTHON) -m tests.cluster.scenarios $(CLUSTER_ARGS)

chaos-cluster: consul build cluster-lib-example
	LOCKWRAP_BIN=$(LOCKWRAP_BIN) LOCKWRAP_LIB_EXAMPLE=$(LOCKWRAP_LIB_EXAMPLE) CONSUL_BIN="$$(scripts/ensure-consul.sh)" \
	  $(PYTHON) -m chaos.cluster_chaos --trials $(CLUSTER_TRIALS) --budget $(CLUSTER_BUDGET) \
	  --setting $(CLUSTER_SETTING) --modes $(CLUSTER_MODES) --clusters $(CLUSTER_CLUSTERS) --summary chaos/results/cluster-summary.md $(CLUSTER_ARGS)

chaos-cluster-quick: consul build cluster-lib-example
	LOCKWRAP_BIN=$(LOCKWRAP_BIN) LOCKWRAP_LIB_EXAMPLE=$(LOCKWRAP_LIB_EXAMPLE) CONSUL_BIN="$$(scripts/ensure-consul.sh)" \
	  $(PYTHON) -m chaos.cluster_chaos --quick --setting $(CLUSTER_SETTING) --modes $(CLUSTER_MODES) $(CLUSTER_ARGS)
