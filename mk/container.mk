# The container image, built and run in the tests (docs/kubernetes.md); see docs/kubernetes.md.
#   make image           the image lockwrap:$(IMAGE_VERSION) from the host's static binary (no pull)
#   make container-test  build it in a private dockerd and run it as PID 1 against a local Consul;
#                        part of `make test`, skipped with a message where Docker cannot run
.PHONY: image image-context container-test
TEST_TARGETS += container-test

IMAGE_VERSION ?= 0.1.0
# Debian's docker CLI builds with BuildKit; with DOCKER_BUILDKIT=1 only the stages needed are built.
DOCKER ?= /usr/bin/docker

# target/image/: what the Dockerfile's `prebuilt` stage copies (static binary, host CA bundle).
image-context: static
	mkdir -p target/image
	cp $(STATIC_BIN) target/image/lockwrap
	cp /etc/ssl/certs/ca-certificates.crt target/image/ca-certificates.crt

image: image-context
	DOCKER_BUILDKIT=1 $(DOCKER) build --build-arg LOCKWRAP_FROM=prebuilt \
	  --build-arg VERSION=$(IMAGE_VERSION) -t lockwrap:$(IMAGE_VERSION) .
	@$(DOCKER) image inspect -f 'image lockwrap:$(IMAGE_VERSION): {{.Size}} bytes' lockwrap:$(IMAGE_VERSION)

container-test: image-context
	tests/container/run.sh
