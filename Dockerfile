# crossfade: multi-stage build → a small runtime image running as a non-root user.
# Build:  docker build -t crossfade .
# Run:    docker run -p 8080:8080 -p 8443:8443 \
#           -v "$PWD/config:/etc/crossfade/config:ro" -v "$PWD/rules:/etc/crossfade/rules:ro" \
#           -v crossfade-state:/var/lib/crossfade crossfade

FROM rust:1-bookworm AS build
# pingora-core builds zlib-ng with cmake. Debian package versions are not pinned: pinned
# versions disappear from the mirrors with every point release and break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY vendor ./vendor
COPY src ./src
COPY assets ./assets
COPY examples ./examples
# The production build: no embedded demo store, no `certs dev` (features `demo`, `dev-certs`),
# and the `dist` profile: the release build without the debug info kept for profiling.
RUN cargo build --profile dist --locked --no-default-features --bin crossfade

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/crossfade --create-home crossfade
COPY --from=build /src/target/dist/crossfade /usr/local/bin/crossfade
USER 10001
WORKDIR /etc/crossfade
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/crossfade"]
CMD ["run", "--config", "/etc/crossfade/config/crossfade.toml"]
