# `make static`: the fully static lockwrap binary the Dockerfile ships (glibc linked statically,
# so it runs in a `scratch` image), and the proof that it is static and runs. `static-test` is that
# check, part of `make test`. Output: target/x86_64-unknown-linux-gnu/release/lockwrap.
.PHONY: static static-test static-check
TEST_TARGETS += static-test

STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_BIN := target/$(STATIC_TARGET)/release/lockwrap
# Same flags as the Dockerfile. With an explicit --target, RUSTFLAGS reach only the target crates,
# not build scripts and proc macros (which must stay dynamic).
STATIC_RUSTFLAGS := -C target-feature=+crt-static

static:
	RUSTFLAGS="$(STATIC_RUSTFLAGS)" $(CARGO) build --release --target $(STATIC_TARGET)
	@$(MAKE) --no-print-directory static-check

# static-test: the checks above, then the chart's wrapper-mode command line and env run with this
# binary against a Consul dev agent (two replicas: one Ready holder, failover on SIGTERM).
static-test: static
	LOCKWRAP_BIN="$(CURDIR)/$(STATIC_BIN)" CONSUL_BIN="$$(scripts/ensure-consul.sh)" \
	  tests/chart/run.sh real_binary

# Five checks: ldd and file say static; it runs; it runs in an empty root (like `scratch`) as uid
# 65532 (the image's user) and installs itself there the way the chart's init container does; the
# last two need root for chroot and are skipped otherwise.
static-check:
	@set -u; bin=$(STATIC_BIN); pass=0; fail=0; skip=0; \
	out=$$(ldd $$bin 2>&1 || true); echo "static: ldd: $$(echo $$out)"; \
	case "$$out" in *"not a dynamic executable"*|*"statically linked"*) pass=$$((pass+1)) ;; \
	  *) echo "static: FAIL $$bin is dynamically linked" >&2; fail=$$((fail+1)) ;; esac; \
	if command -v file >/dev/null 2>&1; then \
	  f=$$(file -b $$bin); echo "static: file: $$f"; \
	  case "$$f" in *"statically linked"*|*"static-pie linked"*) pass=$$((pass+1)) ;; \
	    *) echo "static: FAIL file does not say statically linked" >&2; fail=$$((fail+1)) ;; esac; \
	else echo "static: file(1) not installed, skipped"; skip=$$((skip+1)); fi; \
	if v=$$($$bin --version 2>&1) && echo "$$v" | grep -q lockwrap; then \
	  echo "static: runs: $$v"; pass=$$((pass+1)); \
	else echo "static: FAIL $$bin --version: $$v" >&2; fail=$$((fail+1)); fi; \
	if [ "$$(id -u)" = 0 ] && command -v chroot >/dev/null 2>&1; then \
	  root=$$(mktemp -d); chmod 0755 $$root; mkdir -p $$root/etc/ssl/certs; cp $$bin $$root/lockwrap; \
	  [ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt $$root/etc/ssl/certs/; \
	  if v=$$(chroot --userspec=65532:65532 $$root /lockwrap --version 2>&1); then \
	    echo "static: runs alone in an empty root as uid 65532: $$v"; pass=$$((pass+1)); \
	  else echo "static: FAIL in an empty root: $$v" >&2; fail=$$((fail+1)); fi; \
	  mkdir -p $$root/shared; chown 65532:65532 $$root/shared; \
	  if chroot --userspec=65532:65532 $$root /lockwrap install /shared/lockwrap >/dev/null 2>&1 \
	    && v=$$(chroot --userspec=65532:65532 $$root /shared/lockwrap --version 2>&1); then \
	    echo "static: installs itself (init container copy) and the copy runs: $$v"; pass=$$((pass+1)); \
	  else echo "static: FAIL lockwrap install in an empty root" >&2; fail=$$((fail+1)); fi; \
	  rm -rf $$root; \
	else echo "static: not root, empty-root run and install skipped"; skip=$$((skip+2)); fi; \
	if [ $$skip -gt 0 ]; then echo "static: $$pass passed, $$fail failed, $$skip skipped"; \
	else echo "static: $$pass passed, $$fail failed"; fi; \
	[ $$fail = 0 ]
