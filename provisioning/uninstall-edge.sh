#!/usr/bin/env bash
# Remove the parkwatch edge daemon installed by provisioning/install-edge.sh.
#
#   sudo provisioning/uninstall-edge.sh                  # software and service; keeps config and data
#   sudo provisioning/uninstall-edge.sh --purge          # also config, every secret, /var/lib/parkwatch
#                                                        # and the user; refuses while predictions wait
#   sudo provisioning/uninstall-edge.sh --purge --yes    # ... and deletes the unsent predictions too
#
# --purge first counts the predictions still waiting in the outbox (not yet received by the
# cloud). If there are any, it changes nothing, says how many, and asks for --yes. It removes
# every secret the box holds: the status token, the MQTT password file and TLS client key and
# certificate named in edge.toml (wherever they are), and the trusted root.
#
# Honours the same PARKWATCH_* variables as install-edge.sh. Safe to run twice.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
root=${PARKWATCH_ROOT:-}
prefix=${PARKWATCH_PREFIX:-/opt/parkwatch}
etc=${PARKWATCH_ETC:-/etc/parkwatch}
state=${PARKWATCH_STATE:-/var/lib/parkwatch}
unit_dir=${PARKWATCH_UNIT_DIR:-/etc/systemd/system}
user=${PARKWATCH_USER:-parkwatch}
use_systemctl=${PARKWATCH_SYSTEMCTL:-auto}
python=${PARKWATCH_PYTHON:-python3}
purge=0
yes=0
for arg in "$@"; do
  case $arg in
    --purge) purge=1 ;;
    --yes) yes=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "uninstall-edge: unknown argument '$arg' (use --purge [--yes] or nothing)" >&2; exit 1 ;;
  esac
done
[[ $yes == 0 || $purge == 1 ]] || { echo "uninstall-edge: --yes only goes with --purge" >&2; exit 1; }
[[ $(id -u) -eq 0 || -n $root ]] || { echo "uninstall-edge: run as root" >&2; exit 1; }
say() { echo "uninstall-edge: $*"; }
die() { echo "uninstall-edge: $*" >&2; exit 1; }

# What --purge would destroy: the outbox with its count, snapshots, and the secret files.
outbox="$state/outbox.db"; waiting=0; snapshots=0; secrets=()
read_plan() {
  local plan kind path n
  secrets=()
  plan=$("$python" "$here/provisioning/purge_plan.py" "$root" "$etc" "$state" "$etc/edge.toml") \
    || die "cannot count the unsent predictions ($python $here/provisioning/purge_plan.py failed); nothing was removed"
  while IFS=$'\t' read -r kind path n; do
    case $kind in
      outbox) outbox=$path; waiting=$n ;;
      snapshots) snapshots=$n ;;
      secret) secrets+=("$path") ;;
    esac
  done <<< "$plan"
}
if [[ $purge == 1 ]]; then
  read_plan
  if [[ $waiting != 0 && $yes == 0 ]]; then
    if [[ $waiting == -1 ]]; then
      what="the outbox $outbox cannot be read, so it may hold predictions the cloud never received"
    else
      what="$waiting prediction(s) in $outbox were never received by the cloud"
    fi
    die "$what. Nothing was removed. Let the box send them first (status page: \"Predictions waiting\" at 0), or delete them with: $0 --purge --yes"
  fi
fi

systemd_up=0; [[ -d /run/systemd/system ]] && systemd_up=1
if [[ $use_systemctl == 1 || ( $use_systemctl == auto && $systemd_up == 1 && -z $root ) ]]; then
  systemctl disable --now parkwatch-edge.service 2>/dev/null || true
fi
rm -f "$root$unit_dir/parkwatch-edge.service"
if [[ $use_systemctl == 1 || ( $use_systemctl == auto && $systemd_up == 1 && -z $root ) ]]; then
  systemctl daemon-reload
fi
rm -rf "$root$prefix/venv" "$root$prefix/models/initial" "$root$prefix/models"/initial-* \
  "$root$prefix/models"/.incoming.* "$root$prefix/share/doc/park-staff.md" \
  "$root$prefix/share/doc/technician.md" "$root$prefix/share/edge.example.toml"
# The prefix may also hold the cloud install: remove only what is left empty.
rmdir "$root$prefix/share/doc" "$root$prefix/models" 2>/dev/null || true
if [[ ! -e $root$prefix/share/doc ]]; then rm -rf "$root$prefix/share/mosquitto"; rmdir "$root$prefix/share" 2>/dev/null || true; fi
rmdir "$root$prefix" 2>/dev/null || true
say "removed the software and the service"

if [[ $purge == 1 ]]; then
  read_plan  # again: the daemon ran until a moment ago
  if [[ $waiting == -1 ]]; then
    say "deleting the unreadable outbox $outbox"
  elif [[ $waiting != 0 ]]; then
    say "deleting $waiting unsent prediction(s) in $outbox (--yes)"
  fi
  [[ $snapshots == 0 ]] || say "deleting $snapshots snapshot file(s)"
  rm -f "$root$outbox" "$root$outbox-wal" "$root$outbox-shm" "$root$outbox-journal"
  rm -rf "$root$state"
  for secret in "${secrets[@]}"; do
    rm -f "$root$secret"
    say "deleted secret $secret"
  done
  rm -f "$root$etc/edge.toml" "$root$etc/root.json" "$root$etc/root.json.new"
  if ! rmdir "$root$etc" 2>/dev/null && [[ -d $root$etc ]]; then
    say "kept $etc: it still holds $(cd "$root$etc" && ls -A | tr '\n' ' ')(not made by install-edge.sh)"
  fi
  if [[ -z $root ]] && id "$user" >/dev/null 2>&1 && [[ ! -e $etc/cloud.toml ]]; then
    userdel "$user" 2>/dev/null || true
  fi
  say "purged config, secrets, state and user"
else
  say "kept $etc/edge.toml, the token and $state (use --purge to delete them)"
fi
