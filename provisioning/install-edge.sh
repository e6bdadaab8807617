#!/usr/bin/env bash
# Install (or update) the parkwatch edge daemon on this box. Run as root from a parkwatch checkout:
#
#   sudo provisioning/install-edge.sh [--model PACKAGE_DIR_OR_ONNX] [--trusted-root ROOT_JSON] [--no-start]
#
# What it does (idempotent: re-running updates the software and keeps config, token and data):
#  1. system user 'parkwatch' (in group 'video' for USB cameras)
#  2. /opt/parkwatch/venv with the *edge* extra only (no torch), pinned by constraints.txt
#  3. /etc/parkwatch/edge.toml from provisioning/edge.example.toml (only if absent)
#     and /etc/parkwatch/status-token (a random token, only if absent)
#  4. /var/lib/parkwatch (outbox, snapshots, updater state), owned by the service user
#  5. the initial model (--model) into /opt/parkwatch/models/initial, and the release channel's
#     trusted TUF root (--trusted-root: the cloud's tuf-repo/metadata/root.json, printed by
#     'parkwatch cloud keys init') into /etc/parkwatch/root.json; without it updates stay off
#  6. systemd/parkwatch-edge.service into /etc/systemd/system, enabled and started
#
# Environment overrides (used by tests and packagers; defaults in brackets):
#   PARKWATCH_ROOT [""]            install under this folder instead of / (like DESTDIR)
#   PARKWATCH_PREFIX [/opt/parkwatch]  PARKWATCH_ETC [/etc/parkwatch]  PARKWATCH_STATE [/var/lib/parkwatch]
#   PARKWATCH_UNIT_DIR [/etc/systemd/system]   PARKWATCH_USER [parkwatch]
#   PARKWATCH_CREATE_USER [1]      0 = the user must exist already
#   PARKWATCH_SYSTEMCTL [auto]     auto = only when systemd runs and PARKWATCH_ROOT is empty; 0 = never
#   PARKWATCH_PYTHON [python3]     PARKWATCH_PIP_ARGS [""] extra pip arguments (e.g. --no-index --find-links DIR)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
root=${PARKWATCH_ROOT:-}
prefix=${PARKWATCH_PREFIX:-/opt/parkwatch}
etc=${PARKWATCH_ETC:-/etc/parkwatch}
state=${PARKWATCH_STATE:-/var/lib/parkwatch}
unit_dir=${PARKWATCH_UNIT_DIR:-/etc/systemd/system}
user=${PARKWATCH_USER:-parkwatch}
create_user=${PARKWATCH_CREATE_USER:-1}
use_systemctl=${PARKWATCH_SYSTEMCTL:-auto}
python=${PARKWATCH_PYTHON:-python3}
read -r -a pip_args <<< "${PARKWATCH_PIP_ARGS:-}"
model=""
trusted_root=""
start=1

die() { echo "install-edge: $*" >&2; exit 1; }
say() { echo "install-edge: $*"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --model) model=${2:?--model needs a package folder or .onnx file}; shift 2 ;;
    --trusted-root) trusted_root=${2:?--trusted-root needs the path of the cloud root.json}; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

is_root=0; [[ $(id -u) -eq 0 ]] && is_root=1
[[ $is_root -eq 1 || -n $root ]] || die "run as root: sudo $0 (or set PARKWATCH_ROOT to stage into a folder)"
[[ -f $here/pyproject.toml && -d $here/edge ]] || die "$here is not a parkwatch checkout"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$python is missing or older than 3.11: sudo apt-get install -y python3 python3-venv"
"$python" -c 'import venv, ensurepip' 2>/dev/null || die "python venv support is missing: sudo apt-get install -y python3-venv"
[[ -z $model || -e $model ]] || die "--model $model does not exist"
if [[ -n $trusted_root ]]; then
  [[ -f $trusted_root ]] || die "--trusted-root $trusted_root does not exist"
  "$python" -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(d.get("signed", {}).get("_type") != "root")' \
    "$trusted_root" 2>/dev/null || die "--trusted-root $trusted_root is not a TUF root.json (use the cloud's tuf-repo/metadata/root.json)"
fi

# 1. the service user
if ! id "$user" >/dev/null 2>&1; then
  [[ $create_user == 1 ]] || die "user '$user' does not exist (PARKWATCH_CREATE_USER=0)"
  useradd --system --home-dir "$state" --no-create-home --shell /usr/sbin/nologin "$user"
  say "created system user $user"
fi
if [[ $create_user == 1 ]] && getent group video >/dev/null; then usermod -a -G video "$user"; fi
own() { if [[ $is_root -eq 1 ]]; then chown "$@"; fi; }

# 2. software: a venv with the edge extra only
venv=$root$prefix/venv
install -d -m 0755 "$root$prefix" "$root$prefix/share/doc" "$root$prefix/share/mosquitto" "$root$prefix/models"
if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv"
  say "created $venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "${pip_args[@]}" -c "$here/constraints.txt" "$here[edge]" \
  || die "pip could not install parkwatch[edge]; see the messages above (offline box: PARKWATCH_PIP_ARGS='--no-index --find-links WHEELS')"
if "$venv/bin/python" -c 'import torch' 2>/dev/null; then die "torch got into the edge venv; it must not"; fi
# The new model is checked by the installed edge code before anything else changes; a bad one
# stops the script here and the box keeps the model it had (step 5 swaps only a good one in).
models=$root$prefix/models
rm -rf "$models"/.incoming.* "$models"/.initial.link.*  # left by an interrupted run
staged=""
trap 'if [[ -n $staged ]]; then rm -rf "$staged"; fi' EXIT
if [[ -n $model ]]; then
  staged=$(mktemp -d "$models/.incoming.XXXXXX")
  chmod 0755 "$staged"
  if [[ -d $model ]]; then
    cp -a "$model/." "$staged/"
    candidate=$staged
  else
    install -m 0644 "$model" "$staged/model.onnx"
    candidate=$staged/model.onnx
  fi
  # The service user must read every file (a package copied from a 0600 download would not be).
  chmod -R u+rwX,go+rX,go-w "$staged"
  own -R root:root "$staged"
  if ! verdict=$("$venv/bin/python" "$here/provisioning/check_model.py" "$candidate" 2>&1); then
    die "--model $model cannot be used, so the installed model was left as it was: $(tail -n 1 <<< "$verdict")"
  fi
  say "$(tail -n 1 <<< "$verdict")"
fi
install -m 0644 "$here/provisioning/mosquitto/parkwatch.conf" "$root$prefix/share/mosquitto/parkwatch.conf"
for doc in park-staff.md technician.md; do
  [[ -f $here/docs/$doc ]] && install -m 0644 "$here/docs/$doc" "$root$prefix/share/doc/$doc"
done
install -m 0644 "$here/provisioning/edge.example.toml" "$root$prefix/share/edge.example.toml"

# 3. config and token: created once, never overwritten
install -d -m 0750 "$root$etc"
own "root:$user" "$root$etc"
if [[ ! -e $root$etc/edge.toml ]]; then
  sed -e "s#^state_dir = .*#state_dir = \"$state\"#" \
      -e "s#/etc/parkwatch/#$etc/#g" \
      -e "s#/opt/parkwatch/#$prefix/#g" \
      "$here/provisioning/edge.example.toml" > "$root$etc/edge.toml"
  chmod 0640 "$root$etc/edge.toml"
  own "root:$user" "$root$etc/edge.toml"
  say "wrote $etc/edge.toml: edit [device] and [[cameras]] before starting"
  fresh_config=1
else
  say "kept existing $etc/edge.toml"
  fresh_config=0
fi
if [[ ! -s $root$etc/status-token ]]; then
  (umask 077; "$python" -c 'import secrets; print(secrets.token_urlsafe(24))' > "$root$etc/status-token")
  chmod 0640 "$root$etc/status-token"
  own "root:$user" "$root$etc/status-token"
  say "generated the status page token in $etc/status-token"
fi

# 4. state folder
install -d -m 0750 "$root$state"
own "$user:$user" "$root$state"

# 5. the initial model: the copy checked above replaces the old one in one rename of a symlink
#    (models/initial -> initial-STAMP), so a power cut leaves either the old model or the new one.
if [[ -n $staged ]]; then
  target=initial-$(date +%Y%m%d%H%M%S)-$$
  mv "$staged" "$models/$target"
  staged=""
  if [[ -d $models/initial && ! -L $models/initial ]]; then  # a folder left by an older installer
    mv "$models/initial" "$models/initial-old-$$"
  fi
  ln -s "$target" "$models/.initial.link.$$"
  mv -T "$models/.initial.link.$$" "$models/initial"
  for old in "$models"/initial-*; do
    [[ $old == "$models/$target" ]] || rm -rf "$old"
  done
  say "installed the model as $prefix/models/initial"
fi

# the trusted TUF root: replaced only by a newer root, which the updater also does by itself
if [[ -n $trusted_root ]]; then
  install -m 0644 "$trusted_root" "$root$etc/root.json.new"
  mv "$root$etc/root.json.new" "$root$etc/root.json"
  if grep -q '^# trusted_root = ' "$root$etc/edge.toml"; then
    sed -i "s#^\# trusted_root = .*#trusted_root = \"$etc/root.json\"#" "$root$etc/edge.toml"
  fi
  say "installed the release channel's trusted root as $etc/root.json"
fi

# 6. the service
install -d -m 0755 "$root$unit_dir"
sed -e "s#@PREFIX@#$prefix#g" -e "s#@ETC@#$etc#g" -e "s#@STATE@#$state#g" -e "s#@USER@#$user#g" \
  "$here/systemd/parkwatch-edge.service" > "$root$unit_dir/parkwatch-edge.service.tmp"
chmod 0644 "$root$unit_dir/parkwatch-edge.service.tmp"
mv "$root$unit_dir/parkwatch-edge.service.tmp" "$root$unit_dir/parkwatch-edge.service"

# --allow-placeholders: right after install the example's CHANGE-ME values are expected (warned);
# the technician's own 'edge config check' after editing refuses them.
"$venv/bin/parkwatch" edge config check --allow-placeholders "$root$etc/edge.toml" \
  || die "$etc/edge.toml is invalid (message above); fix it and run this script again"

systemd_up=0; [[ -d /run/systemd/system ]] && systemd_up=1
if [[ $use_systemctl == 1 || ( $use_systemctl == auto && $systemd_up == 1 && -z $root ) ]]; then
  systemctl daemon-reload
  if [[ $start == 1 && $fresh_config == 0 ]]; then
    systemctl enable parkwatch-edge.service
    systemctl restart parkwatch-edge.service
    say "service enabled and (re)started: systemctl status parkwatch-edge"
  else
    systemctl enable parkwatch-edge.service
    say "service enabled; start it after editing the config: sudo systemctl start parkwatch-edge"
  fi
else
  say "systemd not used here (PARKWATCH_ROOT set, PARKWATCH_SYSTEMCTL=0 or no systemd running)"
fi
say "done. Status page token: $etc/status-token. Guide: $prefix/share/doc/park-staff.md"
