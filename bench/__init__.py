"""The lockwrap benchmarks (bench.bench, bench.queue_bench); shared machinery is in kit."""
