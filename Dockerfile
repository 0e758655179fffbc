# lockwrap container image: one static binary at /lockwrap in an otherwise empty (scratch) image,
# running as uid 65532. It works as PID 1: lockwrap forwards signals to the command's process group
# and, as PID 1, reaps every zombie itself (no tini, and no --subreaper: that flag is for running
# under another PID 1). See docs/kubernetes.md. Needs BuildKit (DOCKER_BUILDKIT=1 or buildx).
#
# Two ways to get the binary into the image, chosen with LOCKWRAP_FROM:
#
#   builder (default, for users with a registry): compile it in a Rust image.
#     docker build -t lockwrap:0.1.0 .
#
#   prebuilt: the static binary `make static` built on the host, staged by `make image` in
#   target/image/ (with the host's CA bundle). No base image is pulled.
#     make image        # = make static, stage target/image/, then:
#     docker build --build-arg LOCKWRAP_FROM=prebuilt -t lockwrap:0.1.0 .
#
#   docker run --rm lockwrap:0.1.0 --version
#
# Nothing else is in the image: the Helm chart's init container copies the binary into a shared
# emptyDir with `/lockwrap install /shared/lockwrap` (scratch has no cp).

ARG RUST_IMAGE=rust:1-bookworm
ARG LOCKWRAP_FROM=builder

FROM ${RUST_IMAGE} AS builder
ARG TARGET=x86_64-unknown-linux-gnu
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# crt-static links glibc statically (static-pie), so the binary needs no loader or libc in the
# final image; with an explicit --target, build scripts and proc macros stay dynamic as they must.
# The cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --locked --target "${TARGET}" \
 && mkdir -p /out \
 && cp "target/${TARGET}/release/lockwrap" /out/lockwrap \
 && cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt
# Fail the build if the binary is not static or does not run.
RUN ldd /out/lockwrap 2>&1 | grep -Eq 'not a dynamic executable|statically linked' \
 && /out/lockwrap --version

# The same /out, from the host: `make image` checked the binary is static (make static-check).
FROM scratch AS prebuilt
COPY target/image/lockwrap target/image/ca-certificates.crt /out/

# BuildKit builds only the stage named here and what it needs: with `prebuilt`, no Rust image.
FROM ${LOCKWRAP_FROM} AS payload

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="lockwrap" \
      org.opencontainers.image.description="Run a program only while holding a distributed lock in Consul: CLI, container entrypoint (PID 1), Kubernetes sidecar" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="scratch"
# CA bundle for CONSUL_HTTP_ADDR=https://… without CONSUL_CACERT, and for webhooks.
COPY --from=payload /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# The image's only user, 65532 (nonroot), as in distroless images.
COPY docker/passwd /etc/passwd
COPY docker/group /etc/group
COPY --from=payload /out/lockwrap /lockwrap
USER 65532:65532
ENTRYPOINT ["/lockwrap"]
CMD ["--help"]
