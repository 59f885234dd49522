# crossfade: multi-stage build → a small runtime image running as a non-root user.
# Build:  docker build -t crossfade .
# Run:    docker run -p 8080:8080 -p 8443:8443 -p 127.0.0.1:9901:9901 \
#           --env-file /etc/crossfade/crossfade.env \
#           -v "$PWD/config:/etc/crossfade/config:ro" -v "$PWD/rules:/etc/crossfade/rules:ro" \
#           -v crossfade-state:/var/lib/crossfade crossfade
# (contrib/crossfade.env.example lists the secrets; publish 9901 only where Prometheus is.)

FROM rust:1-bookworm AS build
# pingora-core builds zlib-ng with cmake. Debian package versions are not pinned: pinned
# versions disappear from the mirrors with every point release and break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own layer: a change to crossfade's sources rebuilds only
# crossfade, not the ~400 crates below it. The stub sources stand in for src/ until then.
COPY Cargo.toml Cargo.lock build.rs ./
COPY vendor ./vendor
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --profile dist --locked --no-default-features --bin crossfade \
 && rm -rf src
COPY src ./src
COPY assets ./assets
# The production build: no embedded demo store, no `certs dev` (features `demo`, `dev-certs`),
# and the `dist` profile: the release build without debug info (stripped of it; symbol names
# stay for backtraces). `touch` makes cargo rebuild the crate whose stub was built above.
RUN touch src/main.rs src/lib.rs \
 && cargo build --profile dist --locked --no-default-features --bin crossfade

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/crossfade --create-home crossfade \
 && install -d -o crossfade -g crossfade /run/crossfade
COPY --from=build /src/target/dist/crossfade /usr/local/bin/crossfade
USER 10001
WORKDIR /etc/crossfade
# The release state (flips, canaries, maintenance, rollback history) lives on this volume.
VOLUME ["/var/lib/crossfade"]
# The admin API (metrics, purge, release control) listens on every interface of the
# container, so a Prometheus outside can scrape it; every call but /healthz needs a token.
ENV CROSSFADE_ADMIN_LISTEN=0.0.0.0:9901
EXPOSE 8080 8443 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/crossfade", "health"]
ENTRYPOINT ["/usr/local/bin/crossfade"]
CMD ["run", "--config", "/etc/crossfade/config/crossfade.toml"]
