#!/usr/bin/env bash
# Install the Debian packages a parkwatch target needs, or say exactly how to.
# usage: provisioning/system-deps.sh broker|camera|browser|postgres|container ...
#   container: systemd-nspawn and debootstrap, for the tests that boot a Debian container with
#              systemd as PID 1 (tests/test_systemd_*.py)
set -euo pipefail

pkgs=()
need() { # need BINARY-OR-PATH PACKAGE...
  local probe=$1; shift
  if [[ $probe == /* ]]; then [[ -e $probe ]] && return 0; else command -v "$probe" >/dev/null 2>&1 && return 0; fi
  pkgs+=("$@")
}

for what in "$@"; do
  case $what in
    broker)  need mosquitto mosquitto mosquitto-clients ;;
    camera)  need ffmpeg ffmpeg
             need gst-launch-1.0 gstreamer1.0-tools
             need /usr/lib/x86_64-linux-gnu/girepository-1.0/GstRtspServer-1.0.typelib \
                  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good \
                  gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad
             if ! /usr/bin/python3 -c 'import gi' >/dev/null 2>&1; then pkgs+=(python3-gi); fi ;;
    browser) need chromium chromium ;;
    # The PostgreSQL fleet store's tests start their own cluster from these binaries (no service).
    postgres) need /usr/lib/postgresql/15/bin/initdb postgresql-15 ;;
    container) need /usr/bin/systemd-nspawn systemd-container
               need /usr/sbin/debootstrap debootstrap ;;
    *) echo "system-deps.sh: unknown set '$what' (broker, camera, browser, postgres, container)" >&2; exit 64 ;;
  esac
done

# mosquitto lives in /usr/sbin, which a non-root PATH may lack.
if [[ " ${pkgs[*]-} " == *" mosquitto "* && -x /usr/sbin/mosquitto ]]; then
  pkgs=("${pkgs[@]/mosquitto}")
fi
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]-}" | awk 'NF && !seen[$0]++')
[[ ${#pkgs[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then
  echo "installing system packages: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
else
  echo "missing system packages. Run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${pkgs[*]}" >&2
  exit 1
fi
