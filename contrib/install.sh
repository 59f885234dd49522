#!/bin/sh
# contrib/install.sh: install crossfade on a systemd host, from the clone (run as root):
# the production binary (no demo store, no debug info), the systemd unit and the upgrade
# script, and — only where there are none yet — the config, rules and an env file for the
# secrets. Run it again after `git pull` to install a new binary; then `crossfade-upgrade`.
set -eu
cd "$(dirname "$0")/.."
cargo build --locked --no-default-features --profile dist --bin crossfade
install -m 0755 target/dist/crossfade /usr/local/bin/crossfade
install -m 0755 contrib/crossfade-upgrade /usr/local/bin/crossfade-upgrade
install -m 0644 contrib/crossfade@.service /etc/systemd/system/crossfade@.service
id crossfade >/dev/null 2>&1 || useradd --system --home-dir /var/lib/crossfade --shell /usr/sbin/nologin crossfade
install -d -m 0755 /etc/crossfade
[ -e /etc/crossfade/config ] || cp -r config /etc/crossfade/config
[ -e /etc/crossfade/rules ] || cp -r rules /etc/crossfade/rules
[ -e /etc/crossfade/crossfade.env ] || install -m 0600 contrib/crossfade.env.example /etc/crossfade/crossfade.env
systemctl daemon-reload
echo "installed. Next: put the tokens in /etc/crossfade/crossfade.env, edit /etc/crossfade/config/crossfade.toml,"
echo "then: systemctl enable --now crossfade@a"
