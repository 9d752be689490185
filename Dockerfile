# syntax=docker/dockerfile:1
#
# sidecache image: a static-ish Rust binary on distroless (glibc, no shell, non-root).
#   docker build -t ghcr.io/example/sidecache:0.1.0 .
#   docker run --rm ghcr.io/example/sidecache:0.1.0 check --config /etc/sidecache/sidecache.toml
# Kubernetes (k8s/base/deployment.yaml) mounts its ConfigMap over /etc/sidecache and passes the
# same `--config /etc/sidecache/sidecache.toml` as CMD below.

# --- build --------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Only what `cargo build` reads. rust-toolchain.toml is left out on purpose: it pins the
# "stable" channel, which would make rustup download a second toolchain instead of using the
# image's. Cargo.toml's rust-version still guards the minimum.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
# The registry and target caches survive between builds (BuildKit); --locked builds exactly
# the dependency versions of Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/sidecache /out/sidecache

# --- runtime ------------------------------------------------------------------------------
# cc: glibc + libgcc_s for the Rust binary; :nonroot runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sidecache /usr/local/bin/sidecache
# A default config so the image runs (and `check`s) on its own; Kubernetes mounts over it.
COPY --chown=0:0 config/sidecache.toml /etc/sidecache/sidecache.toml
USER 65532:65532
# 8080: the proxy (the app's backend); 9901: admin (/healthz /readyz /metrics /admin/*).
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/sidecache"]
CMD ["--config", "/etc/sidecache/sidecache.toml"]
