#!/usr/bin/env bash
# Generate a private CA and a broker certificate for parkwatch's Mosquitto (TLS between boxes
# and the broker whenever traffic leaves a LAN). Usage:
#
#   provisioning/mosquitto/gen-tls.sh OUT_DIR BROKER_NAME [BROKER_IP]
#
# Writes OUT_DIR/ca.crt (install on every box as [mqtt.tls] ca_file), OUT_DIR/ca.key (keep
# offline), OUT_DIR/server.crt and OUT_DIR/server.key (for mosquitto.conf). Existing files are
# never overwritten. Needs openssl.
set -euo pipefail
out=${1:?usage: gen-tls.sh OUT_DIR BROKER_NAME [BROKER_IP]}
name=${2:?usage: gen-tls.sh OUT_DIR BROKER_NAME [BROKER_IP]}
ip=${3:-}
days=${PARKWATCH_TLS_DAYS:-825}
command -v openssl >/dev/null || { echo "openssl is missing: sudo apt-get install -y openssl" >&2; exit 1; }
mkdir -p "$out"
for f in ca.key ca.crt server.key server.crt; do
  [[ -e "$out/$f" ]] && { echo "$out/$f exists; refusing to overwrite it" >&2; exit 1; }
done
umask 077
san="DNS:${name}"
[[ -n "$ip" ]] && san="${san},IP:${ip}"
openssl req -x509 -newkey ed25519 -nodes -days "$days" -subj "/CN=parkwatch broker CA" \
  -keyout "$out/ca.key" -out "$out/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=${name}" \
  -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days "$days" -out "$out/server.crt" -extfile "$out/server.ext" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.crt"
chmod 600 "$out/ca.key" "$out/server.key"
echo "CA: $out/ca.crt (copy to every box); broker: $out/server.crt + $out/server.key (SAN ${san})"
