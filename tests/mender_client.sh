#!/bin/sh
# mender_client.sh — end to end with the real Mender client (Debian mender-client 3.4) behind nginx
# acting as the mTLS gateway on loopback: a device whose key and certificate come from provstation
# authenticates (TLS client certificate verified against the station's CA, signed auth request
# carrying its identity and public key), then uses the issued token for inventory and the update
# check; a certificate from another CA, or none, is refused.
#
# Everything lives in $TMP. The client runs in a private mount namespace (unshare -m) where
# /usr/share/mender/identity (the identity script) and /etc/mender (artifact_info) are ours;
# the host's files are never touched. Needs root (or CAP_SYS_ADMIN) for that, else it skips.
. "$SRCDIR/tests/lib.sh"
# This test starts servers: clean up (lib.sh's EXIT trap) also when the reader goes away.
trap 'exit 129' HUP
trap 'exit 141' PIPE

need mender nginx unshare timeout openssl python3
case $(mender --version 2>/dev/null) in
3.*) ;;
*) skip_all "needs the Go Mender client 3.x ('mender --version' says: $(mender --version 2>&1 | head -1))" ;;
esac
if [ ! -d /usr/share/mender/identity ] || [ ! -d /etc/mender ]; then
	skip_all "mender-client's /usr/share/mender/identity or /etc/mender is missing"
fi
# shellcheck disable=SC2016 # $1 is the inner shell's
unshare -m --propagation private sh -c \
	'mount -t tmpfs ps-test /usr/share/mender/identity && mount --bind "$1" /etc/mender' sh "$TMP" \
	>"$TMP/unshare.err" 2>&1 ||
	skip_all "cannot mount in a private mount namespace (unshare -m): $(head -1 "$TMP/unshare.err")"

SERIAL=SN-0001
CN=$SERIAL.devices.example.com
CN_RE=$(printf %s "$CN" | sed 's/\./\\./g') # for grep
PORT=$(free_port)
export PROVSTATION_CA_PASSPHRASE=mender-client-test # never prompt, should a CA key be encrypted

show() { # show FILE: a file's tail as TAP comments (after a failure)
	tail -n 15 "$1" 2>/dev/null | cut -c1-300 | sed 's/^/#   /'
}
verdict() { # verdict DESC FILE...: check (status of the previous command), showing FILEs on failure
	st=$?
	desc=$1
	shift
	(exit $st)
	check "$desc"
	if [ $st -ne 0 ]; then
		for f in "$@"; do show "$f"; done
	fi
	return $st
}

# --- PKI from the real binary ---------------------------------------------------------------------
ok "ca init" "$PROVSTATION" ca init --dir "$TMP/ca"
ok "ca server-cert for localhost and 127.0.0.1" "$PROVSTATION" ca server-cert --ca-dir "$TMP/ca" \
	--domain localhost --ip 127.0.0.1 --out "$TMP/server"
SERVER_CA=$TMP/ca/ca-cert.pem # what the device trusts for the server (the CA that signed it)

# --- device_files CA_DIR KEY_TYPE DEST ---------------------------------------------------------------
# The device side. provstation provisions a fresh Mender image (built by scripts/mkmenderimg.sh
# with the test's root filesystem mender.conf) with CA_DIR and KEY_TYPE; the files the device
# reads are then taken out of the image's data partition with debugfs, a tool we did not write.
# A device mounts the data partition at /data; this host has no /data, so the paths in the
# extracted mender.conf are rewritten to DEST (the only change made to what the station wrote).
device_files() {
	ca=$1 kt=$2 dest=$3
	mkdir -p "$dest" || return 1
	cat >"$dest.conf" <<EOF
[station]
id = mender-client-test
database = $TMP/audit.db
[ca]
dir = $ca
[device]
key_type = $kt
common_name = {serial}.devices.example.com
[mender]
server_url = https://localhost:$PORT
server_certificate = $SERVER_CA
EOF
	"$SRCDIR/scripts/mkmenderimg.sh" --size 64 --main-conf "$TMP/rootfs.conf" "$dest.img" \
		>"$dest.layout" || return 1
	"$PROVSTATION" provision --config "$dest.conf" --target "$dest.img" --serial "$SERIAL" \
		>"$dest.out" || return 1
	# shellcheck disable=SC2046
	set -- $(awk '$6 == "data" {print $2, $3}' "$dest.layout")
	dd if="$dest.img" of="$dest.data" bs=1M skip=$(($1 / 1048576)) count=$(($2 / 1048576)) \
		status=none || return 1
	for f in mender-cert.pem mender-cert-private.pem mender.conf server.crt; do
		debugfs -R "dump -p /mender/$f $dest/$f" "$dest.data" 2>/dev/null && [ -s "$dest/$f" ] ||
			return 1
	done
	sed -i "s|/data/mender/|$dest/|g" "$dest/mender.conf"
}
# --- end of the device side -------------------------------------------------------------------------

# The root filesystem's /etc/mender/mender.conf for the test: no system D-Bus here (and the client
# must not register on the host's bus if there is one).
echo '{"DBus": {"Enabled": false}}' >"$TMP/rootfs.conf"
ok "device files from a provisioned image" device_files "$TMP/ca" p256 "$TMP/device"
[ "$(stat -c %a "$TMP/device/mender-cert-private.pem")" = 600 ]
check "device key is mode 0600"
head -1 "$TMP/device/mender-cert-private.pem" | grep -q '^-----BEGIN PRIVATE KEY-----$' &&
	openssl pkey -in "$TMP/device/mender-cert-private.pem" -noout -text | grep -q 'NIST CURVE: P-256'
check "default device key is P-256 in PKCS#8 (BEGIN PRIVATE KEY)"

# The namespace's /etc/mender: the daemon will not talk to the server without an artifact name.
mkdir -p "$TMP/etc-mender"
echo "artifact_name=provstation-test-1" >"$TMP/etc-mender/artifact_info"
# The identity script the provisioned image carries: report the serial number.
mkdir -p "$TMP/identity"
printf '#!/bin/sh\necho serialnumber=%s\n' "$SERIAL" >"$TMP/identity/mender-device-identity"
chmod 755 "$TMP/identity/mender-device-identity"

# --- nginx: the mTLS gateway, and behind it (unix socket) a stand-in for the Mender server ----------
# A JWT-shaped token (the 3.4 client stores and replays it without parsing it).
TOKEN=eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwZDEiLCJleHAiOjQxMDI0NDQ4MDAsImlzcyI6Ik1lbmRlciIsIm1lbmRlci5kZXZpY2UiOnRydWV9.c2lnbmF0dXJl
NGINX_USER=""
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root;" # else workers (nobody) cannot enter $TMP (0700)
mkdir -p "$TMP/nginx-tmp"
cat >"$TMP/nginx.conf" <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/error.log info;
events { worker_connections 64; }
http {
	client_body_temp_path $TMP/nginx-tmp/body;
	proxy_temp_path $TMP/nginx-tmp/proxy;
	fastcgi_temp_path $TMP/nginx-tmp/fastcgi;
	uwsgi_temp_path $TMP/nginx-tmp/uwsgi;
	scgi_temp_path $TMP/nginx-tmp/scgi;
	client_body_buffer_size 64k; # keep request bodies in memory: \$request_body is set
	log_format gateway '\$request_method \$uri \$status verify=\$ssl_client_verify '
		'dn="\$ssl_client_s_dn" authz="\$http_authorization"';
	log_format authreq escape=json '\$http_x_men_signature \$request_body';

	server { # the gateway
		listen 127.0.0.1:$PORT ssl;
		server_name localhost;
		access_log $TMP/access.log gateway;
		ssl_certificate $TMP/server/server-cert.pem;
		ssl_certificate_key $TMP/server/server-private.key;
		ssl_client_certificate $TMP/ca/ca-cert.pem;
		ssl_verify_client on;
		location = /api/devices/v1/authentication/auth_requests {
			access_log $TMP/access.log gateway;
			access_log $TMP/auth_requests.log authreq;
			proxy_pass http://unix:$TMP/backend.sock:;
		}
		location /api/devices/ {
			proxy_pass http://unix:$TMP/backend.sock:;
		}
		location / { return 404; }
	}

	server { # the Mender server's device API, as much as the client uses
		listen unix:$TMP/backend.sock;
		access_log off;
		location = /api/devices/v1/authentication/auth_requests {
			if (\$request_method != POST) { return 405; }
			default_type application/jwt;
			return 200 '$TOKEN';
		}
		location = /api/devices/v1/inventory/device/attributes {
			if (\$http_authorization != "Bearer $TOKEN") { return 401; }
			return 200;
		}
		location ~ ^/api/devices/v[12]/deployments/device/deployments/next\$ {
			if (\$http_authorization != "Bearer $TOKEN") { return 401; }
			return 204; # no update
		}
		location / { return 404; }
	}
}
EOF
nginx -c "$TMP/nginx.conf" -p "$TMP/" -e "$TMP/error.log" >"$TMP/nginx.out" 2>&1 &
NGINX_PID=$!
at_exit "kill $NGINX_PID 2>/dev/null; wait $NGINX_PID 2>/dev/null"
i=0 # the pid file appears once the listening sockets are open
while [ ! -s "$TMP/nginx.pid" ] && kill -0 $NGINX_PID 2>/dev/null && [ $i -lt 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
[ -s "$TMP/nginx.pid" ] && [ "$(cat "$TMP/nginx.pid")" = "$NGINX_PID" ]
verdict "nginx gateway up on 127.0.0.1:$PORT" "$TMP/nginx.out" "$TMP/error.log" || {
	done_testing
	exit 1
}

# --- the client ------------------------------------------------------------------------------------
# in_ns ARGS...: run `mender --no-syslog ARGS` in a private mount namespace holding our identity
# script (on a tmpfs, so that a noexec $TMP does not matter) and our /etc/mender. The daemon below
# starts the same command line directly in the background, so that $! is the PID of `timeout`.
# shellcheck disable=SC2016 # expanded by the inner shell
NS_SCRIPT='tmp=$1
	shift
	mount -t tmpfs -o mode=0755 ps-identity /usr/share/mender/identity &&
		cp "$tmp/identity/mender-device-identity" /usr/share/mender/identity/ &&
		mount --bind "$tmp/etc-mender" /etc/mender || exit 125
	exec mender --no-syslog "$@"'
in_ns() {
	timeout 20 unshare -m --propagation private sh -c "$NS_SCRIPT" sh "$TMP" "$@"
}

# bootstrap NAME DEVDIR: authenticate once with a fresh data directory; the client's output goes
# to $TMP/NAME.log, the gateway's logs start empty. Returns the client's exit status.
bootstrap() {
	rm -rf "$TMP/data-$1"
	mkdir -p "$TMP/data-$1"
	: >"$TMP/access.log"
	: >"$TMP/auth_requests.log"
	in_ns -config "$TMP/rootfs.conf" -fallback-config "$2/mender.conf" -data "$TMP/data-$1" \
		bootstrap --forcebootstrap >"$TMP/$1.log" 2>&1
	bs_st=$?
	i=0 # nginx logs once the response is out: give it a moment
	while [ ! -s "$TMP/access.log" ] && [ $i -lt 10 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	return $bs_st
}

# auth_ok_line: the gateway's line for the auth request that went through with a verified certificate
auth_ok_line() {
	grep "^POST /api/devices/v1/authentication/auth_requests 200 verify=SUCCESS dn=\"CN=${CN_RE}[,\"]" \
		"$TMP/access.log"
}

# split_request DIR: the logged auth request into DIR/{body,sig,pubkey.pem,id_data}
split_request() {
	mkdir -p "$1" && python3 - "$TMP/auth_requests.log" "$1" <<'EOF'
import base64, json, sys
lines = open(sys.argv[1]).read().splitlines()
sig, body = lines[-1].split(" ", 1)
body = json.loads('"' + body + '"').encode()  # nginx escape=json
req = json.loads(body)
out = sys.argv[2]
open(out + "/body", "wb").write(body)
open(out + "/sig", "wb").write(base64.b64decode(sig))
open(out + "/pubkey.pem", "w").write(req["pubkey"])
open(out + "/id_data", "w").write(req["id_data"])
EOF
}

# same_pubkey DIR KEY: the submitted public key is KEY's
same_pubkey() {
	openssl pkey -pubin -in "$1/pubkey.pem" -outform DER -out "$1/pub.der" &&
		openssl pkey -in "$2" -pubout -outform DER -out "$1/key.der" &&
		cmp -s "$1/pub.der" "$1/key.der"
}

# verify_sig DIR: X-MEN-Signature verifies over the body with the submitted public key
# (ECDSA/RSA: SHA-256 digest; Ed25519: the raw body)
verify_sig() {
	if openssl pkey -pubin -in "$1/pubkey.pem" -noout -text | grep -q '^ED25519'; then
		openssl pkeyutl -verify -pubin -inkey "$1/pubkey.pem" -rawin -in "$1/body" -sigfile "$1/sig"
	else
		openssl dgst -sha256 -verify "$1/pubkey.pem" -signature "$1/sig" "$1/body"
	fi
}

# 1. The provisioned device authenticates.
sum_before=$(cksum <"$TMP/device/mender-cert-private.pem")
bootstrap device "$TMP/device"
verdict "client bootstrap exits 0" "$TMP/device.log"
grep -q 'successfully received new authorization data from server https://localhost:'"$PORT" \
	"$TMP/device.log"
check "client logs that it received its authorization token"
auth_ok_line >/dev/null
verdict "gateway: auth request 200 with verified certificate CN=$CN" "$TMP/access.log"
split_request "$TMP/req"
check "auth request body logged"
[ "$(cat "$TMP/req/id_data")" = '{"serialnumber":"'$SERIAL'"}' ]
check "auth request carries the identity {\"serialnumber\":\"$SERIAL\"}"
head -1 "$TMP/req/pubkey.pem" | grep -q '^-----BEGIN PUBLIC KEY-----$' &&
	same_pubkey "$TMP/req" "$TMP/device/mender-cert-private.pem"
check "auth request carries the device's public key (SPKI PEM)"
ok "auth request signature verifies with that key" verify_sig "$TMP/req"
[ "$(cksum <"$TMP/device/mender-cert-private.pem")" = "$sum_before" ]
check "--forcebootstrap leaves the provisioned key alone"

# 2. The daemon goes on with the token: inventory, then the update check, over the same mTLS.
rm -rf "$TMP/data-daemon"
mkdir -p "$TMP/data-daemon"
echo "device_type=provstation-test" >"$TMP/data-daemon/device_type"
: >"$TMP/access.log"
timeout 20 unshare -m --propagation private sh -c "$NS_SCRIPT" sh "$TMP" \
	-config "$TMP/rootfs.conf" -fallback-config "$TMP/device/mender.conf" \
	-data "$TMP/data-daemon" daemon >"$TMP/daemon.log" 2>&1 &
DAEMON_PID=$!
stop_daemon() {
	[ -n "$DAEMON_PID" ] || return 0
	kill "$DAEMON_PID" 2>/dev/null # timeout passes SIGTERM on to the client
	wait "$DAEMON_PID" 2>/dev/null
	DAEMON_PID=""
}
at_exit stop_daemon
i=0 # until the update check went out, the client gave up for a minute, or 10 s
while ! grep -q 'deployments/next' "$TMP/access.log" && kill -0 "$DAEMON_PID" 2>/dev/null &&
	! grep -q 'before next inventory update attempt' "$TMP/daemon.log" && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
stop_daemon
auth_ok_line >/dev/null
verdict "daemon: authenticates through the gateway" "$TMP/daemon.log"
grep -q "^PUT /api/devices/v1/inventory/device/attributes 200 verify=SUCCESS dn=\"CN=${CN_RE}[,\"].* authz=\"Bearer $TOKEN\"" \
	"$TMP/access.log"
verdict "daemon: inventory sent with the issued token (PUT .../inventory/device/attributes 200)" \
	"$TMP/access.log" "$TMP/daemon.log"
grep -q "^POST /api/devices/v2/deployments/device/deployments/next 204 verify=SUCCESS dn=\"CN=${CN_RE}[,\"]" \
	"$TMP/access.log"
check "daemon: update check with the token (POST .../v2/deployments/device/deployments/next 204)"

# 3. Same subject, certificate from another CA: refused.
ok "another CA" "$PROVSTATION" ca init --dir "$TMP/other-ca"
ok "provision the same serial with the other CA" device_files "$TMP/other-ca" p256 "$TMP/device-other"
! bootstrap other "$TMP/device-other"
verdict "other CA: client bootstrap fails" "$TMP/other.log"
! grep -q 'verify=SUCCESS' "$TMP/access.log" && grep -q 'verify=FAILED' "$TMP/access.log"
verdict "other CA: gateway logs FAILED verification and no SUCCESS" "$TMP/access.log"
! grep -q 'successfully received new authorization data' "$TMP/other.log"
check "other CA: client got no token"

# 4. No client certificate at all (the auth key alone): refused.
ok "provision another image" device_files "$TMP/ca" p256 "$TMP/device-nocert"
python3 - "$TMP/device-nocert/mender.conf" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
del c["HttpsClient"]
json.dump(c, open(sys.argv[1], "w"))
EOF
! bootstrap nocert "$TMP/device-nocert"
verdict "no client certificate: client bootstrap fails" "$TMP/nocert.log"
grep -q '^POST /api/devices/v1/authentication/auth_requests 400 verify=NONE' "$TMP/access.log" &&
	! grep -q 'verify=SUCCESS' "$TMP/access.log"
verdict "no client certificate: gateway answers 400, verify=NONE" "$TMP/access.log"

# 5. Other key types the station issues load in the 3.4 client (signing and TLS).
for kt in p384 ed25519 rsa3072; do
	ok "provision with key_type = $kt" device_files "$TMP/ca" "$kt" "$TMP/device-$kt"
	bootstrap "$kt" "$TMP/device-$kt"
	verdict "$kt: client bootstrap exits 0" "$TMP/$kt.log"
	auth_ok_line >/dev/null
	verdict "$kt: gateway verified the certificate" "$TMP/access.log"
	split_request "$TMP/req-$kt" &&
		same_pubkey "$TMP/req-$kt" "$TMP/device-$kt/mender-cert-private.pem" &&
		verify_sig "$TMP/req-$kt" >/dev/null
	check "$kt: auth request signed with the device key"
done

done_testing
