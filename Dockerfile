# poolgate: multi-stage build. Compile in the Rust image, run on distroless.
# TLS roots are compiled in (webpki-roots), so the runtime image needs no CA
# bundle (a private CA for the upstream is a file: upstream.ca_file).
#
#   docker build --build-arg POOLGATE_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) -t poolgate .
#   docker run --rm -p 8080:8080 poolgate --config /etc/poolgate/poolgate.toml --demo-upstream
FROM rust:1-bookworm AS build
WORKDIR /src

# 1. Dependencies only, in a layer of their own: it is rebuilt when Cargo.toml,
#    Cargo.lock or build.rs change, not on every source change. The sources
#    are stand-ins (benches/ too: Cargo.toml declares [[bench]] targets).
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/decision.rs \
 && echo 'fn main() {}' > benches/memory.rs \
 && cargo build --release --locked --bin poolgate \
 && rm -rf src benches \
      target/release/poolgate target/release/deps/poolgate-* \
      target/release/deps/libpoolgate-* target/release/.fingerprint/poolgate-*

# 2. The real sources. .git is not in the context (.dockerignore): the commit
#    for poolgate_build_info comes from this build argument ("unknown" without).
COPY src ./src
COPY benches ./benches
ARG POOLGATE_BUILD_COMMIT=unknown
ENV POOLGATE_BUILD_COMMIT=${POOLGATE_BUILD_COMMIT}
RUN cargo build --release --locked --bin poolgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/poolgate /usr/local/bin/poolgate
# The sample configuration (file source, config/pool.json); mount your own over /etc/poolgate.
COPY config/ /etc/poolgate/
# The config file for every subcommand, the healthcheck included (--config wins).
ENV POOLGATE_CONFIG=/etc/poolgate/poolgate.toml
# A container must listen on all interfaces to be reachable. The admin port keeps
# the config's loopback address unless POOLGATE_ADMIN_LISTEN is set (a pod sets
# it to 0.0.0.0:9090 for its probes; never expose it outside the pod).
ENV POOLGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080 9090
# distroless "nonroot" (uid 65532), numeric so Kubernetes runAsNonRoot can verify it.
USER 65532:65532
# No shell or curl in distroless: the binary asks its own admin /readyz
# (2s timeouts; exit 0 ready, 1 not, 2 bad config). Kubernetes ignores this and
# uses the probes of config/kubernetes.yaml.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/poolgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/poolgate"]
CMD ["--config", "/etc/poolgate/poolgate.toml"]
