# Helm chart tests (charts/lockwrap) and example manifests: see docs/kubernetes.md.
# No helm binary is needed: tools/chart-render renders like `helm template`, and kubernetes-validate
# checks the manifests offline against the Kubernetes 1.30 schemas. Installs what it needs.
.PHONY: chart-test chart-render
TEST_TARGETS += chart-test

chart-test:
	tests/chart/run.sh

# Render one scenario the way `helm template` would: make chart-render VALUES=charts/lockwrap/ci/minimal-values.yaml
VALUES ?= charts/lockwrap/ci/minimal-values.yaml
chart-render:
	@tests/chart/run.sh --build-only >/dev/null
	@.tools/bin/chart-render -f $(VALUES) charts/lockwrap
