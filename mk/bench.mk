# Benchmarks and chaos suite (docs/performance.md). Owned by bench/ and chaos/ (shared machinery in
# kit/); Python 3 standard library only.
#   make bench        lockwrap vs `consul lock` (not part of `make test`; ~15 min)
#   make bench-quick  small iteration counts (~5 min), results not written
#   make bench-queue  fair queue (--queue) vs racing waiters vs `consul lock`, N = 1/10/50/200 (~12 min);
#                     part of `make bench`; writes bench/results/queue.{json,md}
#   make chaos        full fault-injection run: >= 1,000 trials, bounded by CHAOS_BUDGET seconds
#   make chaos-short  ~2 minute chaos run; part of `make test`
#   make chaos-holders  faults aimed at live holders (--holder-bias 1): CHAOS_HOLDER_TRIALS trials
PYTHON ?= python3
BENCH_ARGS ?=
QUEUE_BENCH_ARGS ?=
CHAOS_ARGS ?=
CHAOS_TRIALS ?= 1000
CHAOS_BUDGET ?= 5400
CHAOS_HOLDER_TRIALS ?= 200
LOCKWRAP_BIN ?= $(CURDIR)/target/release/lockwrap

.PHONY: bench bench-quick bench-queue chaos chaos-short chaos-holders

bench: consul build
	$(PYTHON) -m bench.bench --lockwrap $(LOCKWRAP_BIN) $(BENCH_ARGS)
	$(PYTHON) -m bench.queue_bench --lockwrap $(LOCKWRAP_BIN) $(QUEUE_BENCH_ARGS)

bench-quick: consul build
	$(PYTHON) -m bench.bench --lockwrap $(LOCKWRAP_BIN) --quick --out '' $(BENCH_ARGS)
	$(PYTHON) -m bench.queue_bench --lockwrap $(LOCKWRAP_BIN) --quick --out '' $(QUEUE_BENCH_ARGS)

bench-queue: consul build
	$(PYTHON) -m bench.queue_bench --lockwrap $(LOCKWRAP_BIN) $(QUEUE_BENCH_ARGS)

chaos: consul build
	$(PYTHON) -m chaos.chaos --lockwrap $(LOCKWRAP_BIN) --trials $(CHAOS_TRIALS) \
	  --budget $(CHAOS_BUDGET) --report chaos/results/latest.json $(CHAOS_ARGS)

chaos-holders: consul build
	$(PYTHON) -m chaos.chaos --lockwrap $(LOCKWRAP_BIN) --holder-bias 1 \
	  --trials $(CHAOS_HOLDER_TRIALS) --min-trials $(CHAOS_HOLDER_TRIALS) --budget $(CHAOS_BUDGET) \
	  --report chaos/results/holders.json $(CHAOS_ARGS)

chaos-short: consul build
	$(PYTHON) -m chaos.chaos --lockwrap $(LOCKWRAP_BIN) --short $(CHAOS_ARGS)

TEST_TARGETS += chaos-short
