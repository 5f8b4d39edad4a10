#!/usr/bin/env bash
# Grades Pylon's TLS with testssl.sh (Debian's package): a throwaway CA issues a P-256
# certificate for localhost with an OCSP responder address, openssl signs a "good" OCSP
# response that Pylon staples, and `pylon serve` terminates TLS with it. Fails on any finding
# rated MEDIUM or worse (the CA-record lookup, which needs public DNS, is only LOW).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p pylon
source scripts/lib.sh
command -v testssl >/dev/null || { echo "testssl not found: run ./scripts/setup" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -days 3650 -subj "/CN=Pylon TLS check CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out req.csr \
  -subj "/CN=localhost" 2>/dev/null
cat >ext.cnf <<'EOF'
subjectAltName=DNS:localhost
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
authorityInfoAccess=OCSP;URI:http://127.0.0.1:9/ocsp
EOF
openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 365 \
  -extfile ext.cnf 2>/dev/null
# A "good" status for the leaf, as the CA's responder would answer it.
serial=$(openssl x509 -in cert.pem -noout -serial | cut -d= -f2)
expiry=$(date -u -d "+365 days" +%y%m%d%H%M%SZ)
printf 'V\t%s\t\t%s\tunknown\t/CN=localhost\n' "$expiry" "$serial" >index.txt
openssl ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem -issuer ca.pem \
  -cert cert.pem -respout ocsp.der -ndays 7 >/dev/null 2>&1
cd - >/dev/null

port=$(free_port)
cat >"$dir/pylon.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[server.tls]
cert_file = "$dir/cert.pem"
key_file = "$dir/key.pem"
ocsp_file = "$dir/ocsp.der"
[data]
dir = "$dir/data"
[auth]
mode = "none"
EOF
target/debug/pylon serve --config "$dir/pylon.toml" >"$dir/pylon.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -sf --cacert "$dir/ca.pem" "https://localhost:$port/livez" >/dev/null && break
  sleep 0.1
done
testssl --quiet --color 0 --warnings off --add-ca "$dir/ca.pem" --jsonfile "$dir/testssl.json" \
  "localhost:$port" >"$dir/testssl.txt" 2>&1 || true
python3 - "$dir/testssl.json" <<'EOF'
import json, sys
findings = json.load(open(sys.argv[1]))
bad = [f for f in findings if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL")]
for f in bad:
    print(f"testssl: {f['severity']} {f['id']}: {f['finding']}")
want = {"OCSP_stapling": "offered", "cipher_order": "server", "TLS1_3": "offered"}
for id_, text in want.items():
    got = next((f["finding"] for f in findings if f["id"] == id_), "")
    if text not in got:
        print(f"testssl: expected {id_} to say '{text}', got '{got}'")
        bad.append(id_)
if not findings or bad:
    sys.exit(1)
counts = {}
for f in findings:
    counts[f["severity"]] = counts.get(f["severity"], 0) + 1
print("tls check: testssl.sh found nothing rated MEDIUM or worse", counts)
EOF
