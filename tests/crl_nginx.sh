#!/bin/sh
# crl_nginx.sh — revocation end to end: two devices provisioned into real Mender images, their
# keys and certificates taken out of the images with debugfs; nginx on loopback requires a
# client certificate from the CA and loads the CRL `provstation crl` writes (ssl_crl). Before
# the revocation both devices get in; after `provstation revoke` and a new CRL (nginx reloaded
# by SIGHUP) the revoked device is refused and the other still gets in.
. "$SRCDIR/tests/lib.sh"
PATH=$PATH:/usr/sbin:/sbin
need nginx curl openssl python3 sfdisk mkfs.ext4 mkfs.vfat debugfs dd

unset PROVSTATION_CONFIG PROVSTATION_CA_PASSPHRASE PROVSTATION_DB_BUSY_MS PROVSTATION_NOW
PS=$PROVSTATION
CONF=$TMP/station.conf

# --- the PKI and two provisioned devices ------------------------------------------------------
ok "ca init" "$PS" ca init --dir "$TMP/ca" --subject "/CN=crl test CA/O=provstation tests"
ok "ca server-cert for 127.0.0.1" "$PS" ca server-cert --ca-dir "$TMP/ca" --domain localhost \
	--ip 127.0.0.1 --out "$TMP/server"
cat >"$CONF" <<EOF
[station]
id = crl-test
operator = tester
database = $TMP/audit.db
[ca]
dir = $TMP/ca
[device]
common_name = {serial}.devices.example.com
EOF

# device NAME: provision a fresh image for serial NAME and take the key and certificate the
# device would read out of its data partition, into $TMP/NAME/.
device() {
	mkdir -p "$TMP/$1" &&
		"$SRCDIR/scripts/mkmenderimg.sh" --size 64 "$TMP/$1.img" >"$TMP/$1.layout" &&
		"$PS" provision --config "$CONF" --target "$TMP/$1.img" --serial "$1" >/dev/null ||
		return 1
	# shellcheck disable=SC2046
	set -- "$1" $(awk '$6 == "data" {print $2, $3}' "$TMP/$1.layout")
	dd if="$TMP/$1.img" of="$TMP/$1.data" bs=1M skip=$(($2 / 1048576)) \
		count=$(($3 / 1048576)) status=none || return 1
	for f in mender-cert.pem mender-cert-private.pem; do
		debugfs -R "dump -p /mender/$f $TMP/$1/$f" "$TMP/$1.data" 2>/dev/null &&
			[ -s "$TMP/$1/$f" ] || return 1
	done
}
ok "provision SN-GOOD and take its files out of the image" device SN-GOOD
ok "provision SN-LOST and take its files out of the image" device SN-LOST

# The certificate in the image is the one the audit database recorded for the device.
"$PS" export --config "$CONF" --format jsonl >"$TMP/rows.jsonl"
db_cert() {
	python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["device_serial"] == sys.argv[2]:
        sys.stdout.write(r["cert_pem"])' "$TMP/rows.jsonl" "$1"
}
for d in SN-GOOD SN-LOST; do
	[ "$(db_cert $d)" = "$(cat "$TMP/$d/mender-cert.pem")" ] || echo "$d differs"
done >"$TMP/why"
[ ! -s "$TMP/why" ]
check "the certificates in the images are the ones in the audit database"
LOST_SERIAL=$(openssl x509 -in "$TMP/SN-LOST/mender-cert.pem" -noout -serial | cut -d= -f2)
GOOD_SERIAL=$(openssl x509 -in "$TMP/SN-GOOD/mender-cert.pem" -noout -serial | cut -d= -f2)

ok "a first CRL, nothing revoked yet" "$PS" crl --config "$CONF" --out "$TMP/crl.pem"

# --- nginx --------------------------------------------------------------------------------------
PORT=$(free_port)
[ -n "$PORT" ]
check "a free port on loopback ($PORT)"
nginx_mtls_start "ssl_crl $TMP/crl.pem;" '$ssl_client_verify $ssl_client_serial'

# request NAME DEVICE: one request with DEVICE's key and certificate; the HTTP status in
# $TMP/NAME.code ("000" when there was none), the body in $TMP/NAME.body.
URL="https://127.0.0.1:$PORT/"
request() {
	curl -sS --noproxy '*' --max-time 10 --cacert "$TMP/ca/ca-cert.pem" \
		--cert "$TMP/$2/mender-cert.pem" --key "$TMP/$2/mender-cert-private.pem" \
		-o "$TMP/$1.body" -w '%{http_code}' "$URL" >"$TMP/$1.code" 2>"$TMP/$1.err" </dev/null
	[ -f "$TMP/$1.body" ] || : >"$TMP/$1.body"
}
code() { cat "$TMP/$1.code"; }
body() { cat "$TMP/$1.body"; }
# refused NAME: nginx's 400 for a client certificate error, or a failed TLS handshake, while
# nginx is still running (a connection that never happened does not count).
refused() {
	kill -0 "$NGINX_PID" 2>/dev/null || return 1
	case "$(code "$1")" in
	400) grep -q "The SSL certificate error" "$TMP/$1.body" ;;
	000) true ;;
	*) false ;;
	esac
}


request good1 SN-GOOD
[ "$(code good1)" = 200 ] && [ "$(body good1)" = "SUCCESS $GOOD_SERIAL" ]
check "before any revocation: SN-GOOD gets in (200 SUCCESS $GOOD_SERIAL)"
request lost1 SN-LOST
[ "$(code lost1)" = 200 ] && [ "$(body lost1)" = "SUCCESS $LOST_SERIAL" ]
check "before any revocation: SN-LOST gets in too"

# --- revoke, publish, reload -------------------------------------------------------------------
ok "provstation revoke --serial SN-LOST --reason keyCompromise" \
	"$PS" revoke --config "$CONF" --serial SN-LOST --reason keyCompromise
ok "provstation crl: a new CRL" "$PS" crl --config "$CONF" --out "$TMP/crl.pem"
openssl crl -in "$TMP/crl.pem" -noout -text >"$TMP/crl.txt"
grep -q "Serial Number: $LOST_SERIAL" "$TMP/crl.txt" &&
	! grep -q "Serial Number: $GOOD_SERIAL" "$TMP/crl.txt"
check "the CRL lists SN-LOST's certificate ($LOST_SERIAL) and not SN-GOOD's"
openssl crl -in "$TMP/crl.pem" -noout -crlnumber | grep -qx "crlNumber=0x02"
check "it is CRL number 2"
before=$(wc -l <"$TMP/nginx/error.log")
kill -HUP "$NGINX_PID"
# The reload is done when a new worker answers; poll until the revoked certificate is refused.
i=0
while [ $i -lt 50 ]; do
	request lost2 SN-LOST
	refused lost2 && break
	sleep 0.2
	i=$((i + 1))
done
refused lost2
check "after the reload: SN-LOST's revoked certificate is refused (HTTP $(code lost2))"
! grep -q SUCCESS "$TMP/lost2.body"
check "... it never gets a SUCCESS"
tail -n +$((before + 1)) "$TMP/nginx/error.log" | grep -q "certificate revoked"
check "... nginx logged: certificate revoked"
request good2 SN-GOOD
[ "$(code good2)" = 200 ] && [ "$(body good2)" = "SUCCESS $GOOD_SERIAL" ]
check "SN-GOOD, from the same CA, still gets in"

# The same revocation for Mender Gateway: the serials file.
ok "crl --format serials" "$PS" crl --config "$CONF" --format serials --out "$TMP/blacklist.txt"
[ "$(cat "$TMP/blacklist.txt")" = "$(echo "$LOST_SERIAL" | tr A-F a-f | sed 's/^0*//')" ]
check "MTLS_BLACKLIST_PATH file: SN-LOST's serial, lower-case hex, one per line"

kill -0 "$NGINX_PID" 2>/dev/null
check "nginx is still running"
done_testing
