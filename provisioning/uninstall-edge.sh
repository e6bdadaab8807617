#!/usr/bin/env bash
# Remove the parkwatch edge daemon installed by provisioning/install-edge.sh.
#
#   sudo provisioning/uninstall-edge.sh            # software and service; keeps config and data
#   sudo provisioning/uninstall-edge.sh --purge    # also /etc/parkwatch/edge.toml, the token, root.json,
#                                                  # /var/lib/parkwatch (unsent predictions!) and the user
#
# Honours the same PARKWATCH_* variables as install-edge.sh. Safe to run twice.
set -euo pipefail

root=${PARKWATCH_ROOT:-}
prefix=${PARKWATCH_PREFIX:-/opt/parkwatch}
etc=${PARKWATCH_ETC:-/etc/parkwatch}
state=${PARKWATCH_STATE:-/var/lib/parkwatch}
unit_dir=${PARKWATCH_UNIT_DIR:-/etc/systemd/system}
user=${PARKWATCH_USER:-parkwatch}
use_systemctl=${PARKWATCH_SYSTEMCTL:-auto}
purge=0
case ${1:-} in
  --purge) purge=1 ;;
  "") ;;
  *) echo "uninstall-edge: unknown argument '$1' (use --purge or nothing)" >&2; exit 1 ;;
esac
[[ $(id -u) -eq 0 || -n $root ]] || { echo "uninstall-edge: run as root" >&2; exit 1; }
say() { echo "uninstall-edge: $*"; }

systemd_up=0; [[ -d /run/systemd/system ]] && systemd_up=1
if [[ $use_systemctl == 1 || ( $use_systemctl == auto && $systemd_up == 1 && -z $root ) ]]; then
  systemctl disable --now parkwatch-edge.service 2>/dev/null || true
fi
rm -f "$root$unit_dir/parkwatch-edge.service"
[[ $use_systemctl == 1 || ( $use_systemctl == auto && $systemd_up == 1 && -z $root ) ]] && systemctl daemon-reload
rm -rf "$root$prefix/venv" "$root$prefix/models/initial" "$root$prefix/models"/initial-* \
  "$root$prefix/models"/.incoming.* "$root$prefix/share/doc/park-staff.md" \
  "$root$prefix/share/doc/technician.md" "$root$prefix/share/edge.example.toml"
# The prefix may also hold the cloud install: remove only what is left empty.
rmdir "$root$prefix/share/doc" "$root$prefix/models" 2>/dev/null || true
if [[ ! -e $root$prefix/share/doc ]]; then rm -rf "$root$prefix/share/mosquitto"; rmdir "$root$prefix/share" 2>/dev/null || true; fi
rmdir "$root$prefix" 2>/dev/null || true
say "removed the software and the service"

if [[ $purge == 1 ]]; then
  if [[ -f $root$state/outbox.db ]]; then
    say "deleting $state with its outbox (predictions not yet sent are lost)"
  fi
  rm -rf "$root$state"
  rm -f "$root$etc/edge.toml" "$root$etc/status-token" "$root$etc/root.json"
  rmdir "$root$etc" 2>/dev/null || true
  if [[ -z $root ]] && id "$user" >/dev/null 2>&1 && [[ ! -e /etc/parkwatch/cloud.toml ]]; then
    userdel "$user" 2>/dev/null || true
  fi
  say "purged config, state and user"
else
  say "kept $etc/edge.toml, the token and $state (use --purge to delete them)"
fi
