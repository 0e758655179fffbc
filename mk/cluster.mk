# Real Consul cluster tests (docs/performance.md, "On a real cluster"): 3 servers + 3 client agents
# on 127.0.N.11-13 / .21-23 (cluster slot N, 0 for cluster-test), each under its own uid, partitions
# with iptables (chain LWTEST<N> on lo). Needs root; skips with a message when iptables/setpriv
# cannot work. See tests/cluster/cluster.py.
#   make cluster-test     the issue's table as deterministic scenarios (~3 min); part of `make test`
#   make chaos-cluster    >= 500 fault trials for the default and the fast-failover setting, on
#                         CLUSTER_CLUSTERS clusters side by side (127.0.N.x, N = 1..4; ~35 min)
#                         (CLUSTER_TRIALS, CLUSTER_BUDGET seconds per cluster, CLUSTER_SETTING
#                         default|fast|both)
#   make chaos-cluster-quick  ~10 trials, for development
CLUSTER_TRIALS ?= 500
CLUSTER_BUDGET ?= 5400
CLUSTER_CLUSTERS ?= 4
CLUSTER_SETTING ?= both
CLUSTER_ARGS ?=

.PHONY: cluster-test chaos-cluster chaos-cluster-quick
TEST_TARGETS += cluster-test

cluster-test: consul build
	LOCKWRAP_BIN=$(LOCKWRAP_BIN) CONSUL_BIN="$$(scripts/ensure-consul.sh)" \
	  $(PYTHON) -m tests.cluster.scenarios $(CLUSTER_ARGS)

chaos-cluster: consul build
	LOCKWRAP_BIN=$(LOCKWRAP_BIN) CONSUL_BIN="$$(scripts/ensure-consul.sh)" \
	  $(PYTHON) -m chaos.cluster_chaos --trials $(CLUSTER_TRIALS) --budget $(CLUSTER_BUDGET) \
	  --setting $(CLUSTER_SETTING) --clusters $(CLUSTER_CLUSTERS) --summary chaos/results/cluster-summary.md $(CLUSTER_ARGS)

chaos-cluster-quick: consul build
	LOCKWRAP_BIN=$(LOCKWRAP_BIN) CONSUL_BIN="$$(scripts/ensure-consul.sh)" \
	  $(PYTHON) -m chaos.cluster_chaos --quick --setting $(CLUSTER_SETTING) $(CLUSTER_ARGS)
