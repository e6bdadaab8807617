#!/usr/bin/env bash
# Install the parkwatch cloud on this Debian/Ubuntu host (run as root from a parkwatch checkout):
#
#   sudo provisioning/install-cloud.sh
#
# Idempotent: re-running keeps existing config, keys, credentials and data. Steps:
#  1. system packages (mosquitto) via provisioning/system-deps.sh
#  2. system user 'parkwatch', venv in /opt/parkwatch with the cloud extra (pinned by constraints.txt)
#  3. /etc/parkwatch/cloud.toml from provisioning/cloud.example.toml (if absent)
#  4. data folder, TUF keys and repository ('parkwatch cloud keys init'), the cloud's broker account
#  5. Mosquitto: tuning file, password/ACL config (provisioning/mosquitto/mosquitto.conf.example)
#  6. systemd unit (if systemd/parkwatch-cloud.service exists in the checkout)
# Afterwards: move the root key offline (docs/release-channel.md, "First setup").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PARKWATCH_PREFIX:-/opt/parkwatch}
etc=/etc/parkwatch
data=/var/lib/parkwatch-cloud
[[ $(id -u) -eq 0 ]] || { echo "run as root: sudo $0" >&2; exit 1; }

"$here/provisioning/system-deps.sh" broker
id parkwatch >/dev/null 2>&1 || useradd --system --home-dir "$data" --shell /usr/sbin/nologin parkwatch

if [[ ! -x $prefix/venv/bin/parkwatch ]]; then
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "needs Python >= 3.11" >&2; exit 1; }
  python3 -m venv "$prefix/venv"
  "$prefix/venv/bin/pip" install -q -c "$here/constraints.txt" "$here[cloud]"
fi
pw="$prefix/venv/bin/parkwatch"

install -d -m 0755 "$etc"
install -d -m 0750 -g parkwatch "$etc/secrets"
[[ -e $etc/cloud.toml ]] || install -m 0640 -g parkwatch "$here/provisioning/cloud.example.toml" "$etc/cloud.toml"
install -d -m 0711 -o parkwatch -g parkwatch "$data"
as_pw() { runuser -u parkwatch -- "$pw" cloud "$@" --config "$etc/cloud.toml"; }

if [[ ! -e $data/tuf-repo/metadata/root.json ]]; then
  # Refused while [release] approver_keys_dir is unset (the approver's key must not live here).
  if ! as_pw keys init --as "install-cloud"; then
    echo "keys and TUF repository NOT created (see above): set [release] approver_keys_dir in" \
      "$etc/cloud.toml to the approver's own folder, then run:" \
      "runuser -u parkwatch -- $pw cloud keys init --as NAME --config $etc/cloud.toml" >&2
  fi
fi
install -d -m 2750 -o parkwatch -g mosquitto "$data/broker"  # setgid: files stay group mosquitto
if [[ ! -e $etc/secrets/mqtt-cloud ]]; then
  as_pw devices cloud-account --secret-out "$data/mqtt-cloud.secret" --as "install-cloud"
  install -m 0640 -g parkwatch "$data/mqtt-cloud.secret" "$etc/secrets/mqtt-cloud"
  rm -f "$data/mqtt-cloud.secret"
  echo "set [mqtt] password = { file = \"$etc/secrets/mqtt-cloud\" } in $etc/cloud.toml"
fi

install -d /etc/mosquitto/parkwatch.d /etc/mosquitto/conf.d
install -m 0644 "$here/provisioning/mosquitto/parkwatch.conf" /etc/mosquitto/parkwatch.d/parkwatch.conf
if [[ ! -e /etc/mosquitto/conf.d/parkwatch.conf ]]; then
  sed "s#/var/lib/parkwatch-cloud#$data#g" "$here/provisioning/mosquitto/mosquitto.conf.example" \
    > /etc/mosquitto/conf.d/parkwatch.conf
  echo "edit /etc/mosquitto/conf.d/parkwatch.conf: TLS listener certificates (provisioning/mosquitto/gen-tls.sh)"
fi
systemctl reload-or-restart mosquitto 2>/dev/null || echo "start mosquitto: systemctl restart mosquitto"

if [[ -e $here/systemd/parkwatch-cloud.service ]]; then
  install -m 0644 "$here/systemd/parkwatch-cloud.service" /etc/systemd/system/parkwatch-cloud.service
  systemctl daemon-reload && systemctl enable --now parkwatch-cloud || true
fi
echo "done. Trusted root for the boxes: $data/tuf-repo/metadata/root.json"
echo "next: parkwatch cloud devices add BOX --site SITE --group GROUP --secret-out BOX.secret"
