#!/usr/bin/env bash
# Install (or update) the parkwatch cloud on this Debian/Ubuntu host. Run as root from a checkout:
#
#   sudo provisioning/install-cloud.sh
#
# Idempotent: re-running updates the software and keeps config, keys, credentials and data. Steps:
#  1. system packages (mosquitto) via provisioning/system-deps.sh
#  2. system user 'parkwatch', venv /opt/parkwatch/cloud-venv with the cloud extra (constraints.txt)
#  3. /etc/parkwatch/cloud.toml from provisioning/cloud.example.toml (only if absent)
#     and the dashboard's session secret /etc/parkwatch/secrets/dashboard-session (named in it)
#  4. data folder, the cloud's broker account (its password in /etc/parkwatch/secrets/mqtt-cloud,
#     named in cloud.toml), and the TUF keys and repository ('parkwatch cloud keys init') ONLY
#     when told where the approver's own folder is (PARKWATCH_APPROVER_KEYS_DIR, or [release]
#     approver_keys_dir already in cloud.toml): the approver's key must never be made on this
#     server. Without it the script says exactly what to run, and the cloud runs without a
#     release channel until then.
#  5. Mosquitto: the tuning file and the password/ACL config in /etc/mosquitto/conf.d/ (from
#     provisioning/mosquitto/); the TLS listener stays commented out until its certificates exist
#  6. systemd/parkwatch-cloud.service ('parkwatch cloud serve --skip materializer') and
#     systemd/parkwatch-cloud-materialize.service ('parkwatch cloud materialize', the ingest
#     worker's materializer as a unit of its own), enabled and started with mosquitto
# Afterwards: move the root key offline (docs/release-channel.md, "First setup").
#
# Environment overrides (defaults in brackets):
#   PARKWATCH_PREFIX [/opt/parkwatch]   PARKWATCH_ETC [/etc/parkwatch]
#   PARKWATCH_CLOUD_DATA [/var/lib/parkwatch-cloud]   PARKWATCH_PYTHON [python3]
#   PARKWATCH_MQTT_PORT [1883] (loopback listener)   PARKWATCH_MQTT_TLS_PORT [8883]
#   PARKWATCH_DASHBOARD_PORT [8000]   (ports are written only into files this script creates)
#   PARKWATCH_PIP_ARGS [""]   extra pip arguments (e.g. --no-index --find-links DIR)
#   PARKWATCH_APPROVER_KEYS_DIR [unset]   the approver's folder (their removable disk, mounted
#     here while this runs): written into cloud.toml as [release] approver_keys_dir if that is
#     unset there, and 'keys init' puts the approver key there, the online keys on the server
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PARKWATCH_PREFIX:-/opt/parkwatch}
etc=${PARKWATCH_ETC:-/etc/parkwatch}
data=${PARKWATCH_CLOUD_DATA:-/var/lib/parkwatch-cloud}
python=${PARKWATCH_PYTHON:-python3}
mqtt_port=${PARKWATCH_MQTT_PORT:-1883}
tls_port=${PARKWATCH_MQTT_TLS_PORT:-8883}
dashboard_port=${PARKWATCH_DASHBOARD_PORT:-8000}
read -r -a pip_args <<< "${PARKWATCH_PIP_ARGS:-}"
approver_dir=${PARKWATCH_APPROVER_KEYS_DIR:-}
venv=$prefix/cloud-venv
conf_d=/etc/mosquitto/conf.d
certs=/etc/mosquitto/certs

die() { echo "install-cloud: $*" >&2; exit 1; }
say() { echo "install-cloud: $*"; }
case ${1:-} in
  -h|--help) sed -n '2,/^set -euo/{/^set/!p}' "$0"; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac
[[ $(id -u) -eq 0 ]] || die "run as root: sudo $0"
[[ -f $here/pyproject.toml && -d $here/cloud ]] || die "$here is not a parkwatch checkout"
[[ -z $approver_dir || $approver_dir == /* ]] \
  || die "PARKWATCH_APPROVER_KEYS_DIR must be an absolute path (got '$approver_dir')"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$python is missing or older than 3.11: sudo apt-get install -y python3 python3-venv"
"$python" -c 'import venv, ensurepip' 2>/dev/null || die "python venv support is missing: sudo apt-get install -y python3-venv"

# 1. system packages
"$here/provisioning/system-deps.sh" broker

# 2. user and software
if ! id parkwatch >/dev/null 2>&1; then
  useradd --system --home-dir "$data" --no-create-home --shell /usr/sbin/nologin parkwatch
  say "created system user parkwatch"
fi
install -d -m 0755 "$prefix" "$prefix/share/doc"
if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv"
  say "created $venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "${pip_args[@]}" -c "$here/constraints.txt" "$here[cloud]" \
  || die "pip could not install parkwatch[cloud]; see the messages above"
for doc in operator.md operator-dashboard.md release-channel.md approver.md cloud-engineer-build.md; do
  if [[ -f $here/docs/$doc ]]; then install -m 0644 "$here/docs/$doc" "$prefix/share/doc/$doc"; fi
done
pw=$venv/bin/parkwatch

# 3. config: created once, never overwritten
install -d -m 0755 "$etc"
install -d -m 0750 -g parkwatch "$etc/secrets"
fresh_config=0
if [[ ! -e $etc/cloud.toml ]]; then
  sed -e "s#^data_dir = .*#data_dir = \"$data\"#" \
      -e "s#^port = 1883#port = $mqtt_port#" \
      -e "s#^port = 8000#port = $dashboard_port\nsession_secret = { file = \"$etc/secrets/dashboard-session\" }#" \
      -e "s#^username = \"parkwatch-cloud\"#&\npassword = { file = \"$etc/secrets/mqtt-cloud\" }#" \
      "$here/provisioning/cloud.example.toml" > "$etc/cloud.toml.new"
  chmod 0640 "$etc/cloud.toml.new"
  chgrp parkwatch "$etc/cloud.toml.new"
  mv "$etc/cloud.toml.new" "$etc/cloud.toml"
  fresh_config=1
  say "wrote $etc/cloud.toml"
else
  say "kept existing $etc/cloud.toml"
fi

# The dashboard's cookie-signing secret: kept across restarts, so nobody is signed out by one.
if [[ ! -s $etc/secrets/dashboard-session ]]; then
  (umask 027; "$python" -c 'import secrets; print(secrets.token_hex(32))' > "$etc/secrets/dashboard-session")
  chgrp parkwatch "$etc/secrets/dashboard-session"
  say "generated the dashboard session secret in $etc/secrets/dashboard-session"
fi

# 4. data, keys, the cloud's broker account
install -d -m 0711 -o parkwatch -g parkwatch "$data"
as_pw() { runuser -u parkwatch -- "$pw" cloud "$@" --config "$etc/cloud.toml"; }
# The approver's folder: named in cloud.toml once (an existing different value is an error).
configured_approver_dir() {
  sed -n '/^\[release\]/,/^\[/{s/^approver_keys_dir *= *"\([^"]*\)".*/\1/p}' "$etc/cloud.toml"
}
if [[ -n $approver_dir ]]; then
  have=$(configured_approver_dir)
  if [[ -z $have ]]; then
    grep -q '^\[release\]' "$etc/cloud.toml" || printf '\n[release]\n' >> "$etc/cloud.toml"
    sed -e "/^\[release\]/a approver_keys_dir = \"$approver_dir\"  # the approver's own folder, not on this server" \
      "$etc/cloud.toml" > "$etc/cloud.toml.new"
    chmod 0640 "$etc/cloud.toml.new"; chgrp parkwatch "$etc/cloud.toml.new"
    mv "$etc/cloud.toml.new" "$etc/cloud.toml"
    say "set [release] approver_keys_dir = \"$approver_dir\" in $etc/cloud.toml"
  elif [[ $have != "$approver_dir" ]]; then
    die "$etc/cloud.toml has [release] approver_keys_dir = \"$have\", not $approver_dir: edit one of them"
  fi
fi
approver_dir=$(configured_approver_dir)
if [[ ! -e $data/tuf-repo/metadata/root.json ]]; then
  if [[ -z $approver_dir ]]; then
    say "release channel NOT set up: the TUF keys and repository are made only once the approver's"
    say "  own folder is known, so the approver's signing key never lands on this server. With the"
    say "  approver's disk mounted (e.g. at /media/approver), run this script again as:"
    say "  sudo PARKWATCH_APPROVER_KEYS_DIR=/media/approver/parkwatch-keys $0"
    say "  then unmount the disk; the cloud serves without it (docs/operator.md, docs/approver.md)"
  else
    if [[ ! -e $approver_dir ]]; then
      install -d -m 0700 -o parkwatch -g parkwatch "$approver_dir" \
        || die "cannot create the approver's folder $approver_dir (is the approver's disk mounted?)"
    fi
    runuser -u parkwatch -- test -w "$approver_dir" \
      || die "the parkwatch user cannot write $approver_dir: chown parkwatch $approver_dir (or mount the disk so) and run again"
    as_pw keys init --as install-cloud \
      || die "keys init failed (message above); nothing on the boxes depends on it yet: fix and run again"
    say "the approver's key is in $approver_dir (NOT on this server): unmount it and give it back to the approver"
  fi
fi
install -d -m 2750 -o parkwatch -g mosquitto "$data/broker"  # setgid: files stay group mosquitto
if [[ ! -s $etc/secrets/mqtt-cloud ]]; then
  secret_tmp=$(runuser -u parkwatch -- mktemp -d "$data/.secret.XXXXXX")
  as_pw devices cloud-account --secret-out "$secret_tmp/mqtt-cloud" --as install-cloud
  install -m 0640 -g parkwatch "$secret_tmp/mqtt-cloud" "$etc/secrets/mqtt-cloud"
  rm -rf "$secret_tmp"
  say "created the cloud's broker account; its password is in $etc/secrets/mqtt-cloud"
fi
if ! grep -q "^password = { file = \"$etc/secrets/mqtt-cloud\" }" "$etc/cloud.toml"; then
  say "note: $etc/cloud.toml does not name $etc/secrets/mqtt-cloud as [mqtt] password; set it if the cloud cannot log in"
fi
runuser -u parkwatch -- "$pw" cloud config check "$etc/cloud.toml" \
  || die "$etc/cloud.toml is invalid or names a secret the parkwatch user cannot read (message above)"

# 5. Mosquitto. Debian's mosquitto.conf reads conf.d/*.conf (alphabetically: the tuning first);
#    Mosquitto ignores include_dir inside an included file, so both files live in conf.d itself.
install -d "$conf_d"
install -m 0644 "$here/provisioning/mosquitto/parkwatch.conf" "$conf_d/parkwatch-tuning.conf"
rm -f /etc/mosquitto/parkwatch.d/parkwatch.conf  # where older versions of this script put it
rmdir /etc/mosquitto/parkwatch.d 2>/dev/null || true
if [[ ! -e $conf_d/parkwatch.conf ]]; then
  tls_block=''  # without certificates Mosquitto would not start at all: comment the TLS listener out
  [[ -s $certs/ca.crt && -s $certs/server.crt && -s $certs/server.key ]] \
    || tls_block="/^listener $tls_port\$/,/^tls_version/ s/^/#/"
  sed -e "s#/var/lib/parkwatch-cloud#$data#g" \
      -e "s#^listener 1883 #listener $mqtt_port #" \
      -e "s#^listener 8883#listener $tls_port#" \
      -e "${tls_block:-b}" \
      "$here/provisioning/mosquitto/mosquitto.conf.example" > "$conf_d/parkwatch.conf.new"
  mv "$conf_d/parkwatch.conf.new" "$conf_d/parkwatch.conf"
  if [[ -n $tls_block ]]; then
    say "the TLS listener (port $tls_port) in $conf_d/parkwatch.conf is commented out: make certificates with provisioning/mosquitto/gen-tls.sh into $certs, uncomment it, systemctl restart mosquitto"
  fi
else
  say "kept existing $conf_d/parkwatch.conf"
fi

# 6. services
systemd_up=0; [[ -d /run/systemd/system ]] && systemd_up=1
for unit in parkwatch-cloud.service parkwatch-cloud-materialize.service; do
  sed -e "s#@VENV@#$venv#g" -e "s#@PREFIX@#$prefix#g" -e "s#@ETC@#$etc#g" -e "s#@DATA@#$data#g" \
    "$here/systemd/$unit" > "/etc/systemd/system/$unit.tmp"
  chmod 0644 "/etc/systemd/system/$unit.tmp"
  mv "/etc/systemd/system/$unit.tmp" "/etc/systemd/system/$unit"
done
if [[ $systemd_up == 1 ]]; then
  systemctl daemon-reload
  systemctl enable mosquitto.service parkwatch-cloud.service parkwatch-cloud-materialize.service
  systemctl restart mosquitto.service || die "mosquitto does not start: journalctl -u mosquitto; /var/log/mosquitto/mosquitto.log"
  systemctl restart parkwatch-cloud-materialize.service \
    || die "parkwatch-cloud-materialize does not start: journalctl -u parkwatch-cloud-materialize"
  systemctl restart parkwatch-cloud.service || die "parkwatch-cloud does not start: journalctl -u parkwatch-cloud"
  say "mosquitto, parkwatch-cloud and parkwatch-cloud-materialize enabled and (re)started: systemctl status 'parkwatch-cloud*'"
else
  say "systemd is not running here: start mosquitto and '$pw cloud serve --config $etc/cloud.toml' yourself"
  say "  (it runs the materializer as its child; or run '$pw cloud serve --skip materializer' and"
  say "  '$pw cloud materialize' each under your service manager, as the systemd units do)"
fi
[[ $fresh_config == 0 ]] || say "review $etc/cloud.toml ([gate], [release], [dashboard]) and restart: systemctl restart parkwatch-cloud"
if [[ -e $data/tuf-repo/metadata/root.json ]]; then
  say "done. Trusted root for the boxes: $data/tuf-repo/metadata/root.json"
else
  say "done, without a release channel yet (see 'release channel NOT set up' above)"
fi
say "next: sudo -u parkwatch $pw cloud devices add BOX --site SITE --group GROUP --secret-out BOX.secret --config $etc/cloud.toml"
