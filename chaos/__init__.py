"""The chaos suites (chaos.chaos, chaos.cluster_chaos) and the re-check of a saved run
(chaos.checker); shared machinery is in kit."""
