#!/bin/sh
# nginx_mtls.sh — the certificates `provstation ca` makes, in a real mutual-TLS handshake: an
# nginx on loopback that requires a client certificate from the station's CA accepts a device
# certificate from it, and refuses one from another CA with the same name, or none at all.
. "$SRCDIR/tests/lib.sh"
need nginx curl openssl python3

unset PROVSTATION_CONFIG PROVSTATION_CA_PASSPHRASE
PS=$PROVSTATION
CA_SUBJECT='/CN=provstation test device CA/O=provstation tests'

# --- the PKI ---------------------------------------------------------------------------------
ok "ca init (the station's CA)" "$PS" ca init --dir "$TMP/ca" --subject "$CA_SUBJECT"
ok "ca init (another CA with the same subject)" \
	"$PS" ca init --dir "$TMP/ca-other" --subject "$CA_SUBJECT"
s1=$(openssl x509 -in "$TMP/ca/ca-cert.pem" -noout -subject 2>/dev/null)
s2=$(openssl x509 -in "$TMP/ca-other/ca-cert.pem" -noout -subject 2>/dev/null)
f1=$(openssl x509 -in "$TMP/ca/ca-cert.pem" -noout -fingerprint -sha256 2>/dev/null)
f2=$(openssl x509 -in "$TMP/ca-other/ca-cert.pem" -noout -fingerprint -sha256 2>/dev/null)
[ -n "$s1" ] && [ "$s1" = "$s2" ] && [ -n "$f1" ] && [ "$f1" != "$f2" ]
check "the two CAs share a subject ($s1) but are different certificates"
ok "ca server-cert for localhost and 127.0.0.1" \
	"$PS" ca server-cert --ca-dir "$TMP/ca" --domain localhost --ip 127.0.0.1 \
	--out "$TMP/server"
ok "ca issue: a device certificate from the station's CA" \
	"$PS" ca issue --ca-dir "$TMP/ca" --cn dev-1.example.com --out "$TMP/dev"
ok "ca issue: an Ed25519 device certificate from the station's CA" \
	"$PS" ca issue --ca-dir "$TMP/ca" --cn dev-ed.example.com --key-type ed25519 \
	--out "$TMP/dev-ed"
ok "ca issue: a device certificate with the same CN from the other CA" \
	"$PS" ca issue --ca-dir "$TMP/ca-other" --cn dev-1.example.com --out "$TMP/impostor"

# --- nginx -----------------------------------------------------------------------------------
PORT=$(free_port)
[ -n "$PORT" ]
check "a free port on loopback ($PORT)"
nginx_mtls_start "" '$ssl_client_verify $ssl_client_s_dn'

# curl_tls NAME URL [OPTIONS...]: one request with a bounded time, no proxy; the body goes to
# $TMP/NAME.body, the HTTP status to $TMP/NAME.code ("000" when there was none), curl's exit
# status to $TMP/NAME.rc and its messages to $TMP/NAME.err.
curl_tls() {
	c_name=$1 c_url=$2
	shift 2
	curl -sS --noproxy '*' --max-time 10 -o "$TMP/$c_name.body" -w '%{http_code}' "$@" \
		"$c_url" >"$TMP/$c_name.code" 2>"$TMP/$c_name.err" </dev/null
	echo $? >"$TMP/$c_name.rc"
	[ -s "$TMP/$c_name.body" ] || : >"$TMP/$c_name.body"
}
code() { cat "$TMP/$1.code"; }
body() { cat "$TMP/$1.body"; }
rc() { cat "$TMP/$1.rc"; }
# check_req NAME DESC: check, and when the test failed, what request NAME got as comments.
check_req() {
	cr_st=$?
	(exit $cr_st)
	check "$2"
	[ $cr_st -eq 0 ] && return 0
	echo "#   curl exit $(rc "$1"), HTTP $(code "$1"), body: $(head -c 300 "$TMP/$1.body" |
		tr -s '\n\t' '  ')"
	sed 's/^/#   curl: /' "$TMP/$1.err" | head -3
}

URL="https://127.0.0.1:$PORT/"

# --- the handshakes --------------------------------------------------------------------------
CA="$TMP/ca/ca-cert.pem"
DEV="--cert $TMP/dev/device-cert.pem --key $TMP/dev/device-private.key"

# shellcheck disable=SC2086 # $DEV is two options with paths free of spaces
curl_tls dev "$URL" --cacert "$CA" $DEV
[ "$(rc dev)" -eq 0 ] && [ "$(code dev)" = 200 ]
check_req dev "a device certificate from the CA: HTTP 200"
[ "$(body dev)" = "SUCCESS CN=dev-1.example.com" ]
check "nginx verified it: \$ssl_client_verify SUCCESS, \$ssl_client_s_dn CN=dev-1.example.com"

curl_tls dev-ed "$URL" --cacert "$CA" \
	--cert "$TMP/dev-ed/device-cert.pem" --key "$TMP/dev-ed/device-private.key"
[ "$(code dev-ed)" = 200 ] && [ "$(body dev-ed)" = "SUCCESS CN=dev-ed.example.com" ]
check_req dev-ed "an Ed25519 device certificate from the CA: 200, SUCCESS CN=dev-ed.example.com"

# shellcheck disable=SC2086
curl_tls byname "https://localhost:$PORT/" --resolve "localhost:$PORT:127.0.0.1" \
	--cacert "$CA" $DEV
[ "$(rc byname)" -eq 0 ] && [ "$(code byname)" = 200 ] &&
	[ "$(body byname)" = "SUCCESS CN=dev-1.example.com" ]
check_req byname "the server certificate verifies against the CA for the name localhost"

# shellcheck disable=SC2086
curl_tls wrongname "https://mender.example.com:$PORT/" \
	--resolve "mender.example.com:$PORT:127.0.0.1" --cacert "$CA" $DEV
[ "$(rc wrongname)" -eq 60 ] && [ "$(code wrongname)" = 000 ]
check_req wrongname "... and not for a name it does not carry (curl exit 60, no answer)"

# shellcheck disable=SC2086
curl_tls wrongca "$URL" --cacert "$TMP/ca-other/ca-cert.pem" $DEV
[ "$(rc wrongca)" -eq 60 ] && [ "$(code wrongca)" = 000 ]
check_req wrongca "the server certificate does not verify against the other CA of that name"

# A refusal: nginx's 400 page for the given reason, or a failed TLS handshake (curl 35, 56).
# A connection that never happened (nginx gone) does not count.
refused_by_nginx() { # NAME MESSAGE
	case "$(rc "$1"):$(code "$1")" in
	0:400) grep -q -F "$2" "$TMP/$1.body" && ! grep -q SUCCESS "$TMP/$1.body" ;;
	35:000 | 56:000) kill -0 "$NGINX_PID" 2>/dev/null ;;
	*) false ;;
	esac
}

before=$(wc -l <"$TMP/nginx/error.log")
curl_tls impostor "$URL" --cacert "$CA" \
	--cert "$TMP/impostor/device-cert.pem" --key "$TMP/impostor/device-private.key"
refused_by_nginx impostor "The SSL certificate error"
check_req impostor "a device certificate from the other CA (same CA subject and CN): refused"
[ "$(code impostor)" != 200 ] && ! grep -q SUCCESS "$TMP/impostor.body"
check "... it never gets a 200 SUCCESS"
tail -n +$((before + 1)) "$TMP/nginx/error.log" | grep -q 'client SSL certificate verify error'
check "... nginx logged a client certificate verify error for it"

curl_tls nocert "$URL" --cacert "$CA"
refused_by_nginx nocert "No required SSL certificate was sent"
check_req nocert "no client certificate: refused"

curl_tls servercert "$URL" --cacert "$CA" \
	--cert "$TMP/server/server-cert.pem" --key "$TMP/server/server-private.key"
refused_by_nginx servercert "The SSL certificate error"
check_req servercert "the server certificate (serverAuth only) is refused as a client one"

# After all that, the good device still gets in: nothing above broke the server.
# shellcheck disable=SC2086
curl_tls again "$URL" --cacert "$CA" $DEV
[ "$(code again)" = 200 ] && [ "$(body again)" = "SUCCESS CN=dev-1.example.com" ]
check_req again "the device certificate is still accepted afterwards"

kill -0 "$NGINX_PID" 2>/dev/null
check "nginx is still running"
done_testing
