# syntax=docker/dockerfile:1.7
# The tollgate image: one binary for every role (controller, proxy, standalone, echo, validate).
#
#   docker build -t tollgate:dev .
#
# Stage 1 compiles a profile-guided release binary (build/pgo.sh: an instrumented build, a short
# training run of the gateway on loopback, the optimized build; ~25 % fewer instructions per
# proxied request than a plain release build, see docs/benchmarks.md); stage 2 copies only that
# binary into a distroless base (glibc + libgcc + CA certificates, no shell, no package manager)
# and runs it as an unprivileged user. The process writes nothing to its root filesystem, so
# `readOnlyRootFilesystem: true` works; quota state (`--state-dir`) needs a mounted volume when
# Redis is not used.

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Cache mounts keep the registry and target/ between builds (BuildKit); the final binary is
# copied out of the cache mount before the step ends.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    rustup component add llvm-tools \
 && bin=$(build/pgo.sh | tail -n 1) \
 && install -D -m 0755 "$bin" /out/tollgate \
 && /out/tollgate --version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.description="An API gateway for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tollgate /usr/local/bin/tollgate
# 65532 is distroless's "nonroot"; numeric so runAsNonRoot can verify it.
USER 65532:65532
# Conventional ports: 8080 HTTP, 8443 HTTPS, 9901 proxy admin, 9443 controller subscriptions,
# 9902 controller admin. Every listener is a flag; these only document the chart's defaults.
EXPOSE 8080 8443 9901 9443 9902
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["--help"]
