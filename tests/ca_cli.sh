#!/bin/sh
# ca_cli.sh — `provstation ca init|issue|server-cert` through the real binary: the files and
# their modes, the X.509 v3 profile as openssl reads it back, passphrase-protected CA keys, and
# bad input refused with one line on stderr and nothing written.
. "$SRCDIR/tests/lib.sh"
need openssl stat sha256sum

# Only what each test passes counts: no station configuration or passphrase from outside.
unset PROVSTATION_CONFIG PROVSTATION_CA_PASSPHRASE
PS=$PROVSTATION

# run COMMAND...: run it with stdin not a terminal (never a passphrase prompt), its output
# kept in $TMP/run.out and $TMP/run.err, its status in $run_rc.
run() {
	"$@" >"$TMP/run.out" 2>"$TMP/run.err" </dev/null
	run_rc=$?
	return $run_rc
}

mode() { stat -c %a "$1"; }

# The public key of a certificate and of a private key, as PEM SPKI.
cert_pub() { openssl x509 -in "$1" -noout -pubkey; }
key_pub() { openssl pkey -in "$1" -pubout; }
# key_matches KEY CERT: the private key is the one the certificate was issued for.
key_matches() {
	a=$(key_pub "$1") && b=$(cert_pub "$2") && [ -n "$a" ] && [ "$a" = "$b" ]
}

# subject_fields CERT: one "longName=value" line per subject field.
subject_fields() {
	openssl x509 -in "$1" -noout -subject -nameopt multiline |
		sed -n 's/^  *\([A-Za-z]*\) *= \(.*\)$/\1=\2/p'
}

# ext_is FILE HEADER VALUE: in openssl's text output FILE, the line starting with HEADER
# (e.g. "X509v3 Basic Constraints: critical") is followed by the line VALUE (spaces trimmed).
ext_is() {
	awk -v h="$2" -v v="$3" '
		{ sub(/^[ \t]+/, ""); sub(/[ \t]+$/, "") }
		want && $0 == v { found = 1 }
		{ want = index($0, h) == 1 }
		END { exit !found }' "$1"
}

# ext_text CERT FILE: the extensions an issued certificate carries, as text, into FILE.
EXTS=basicConstraints,keyUsage,extendedKeyUsage,subjectKeyIdentifier,authorityKeyIdentifier
ext_text() {
	openssl x509 -in "$1" -noout -ext "$EXTS,subjectAltName" >"$2"
}

# verify PURPOSE CA CERT [OPTIONS...]
verify() {
	v_purpose=$1 v_ca=$2 v_cert=$3
	shift 3
	openssl verify -purpose "$v_purpose" -CAfile "$v_ca" "$@" "$v_cert"
}

# fails_with DESC PATTERN COMMAND...: the command fails, for the reason its output matching
# PATTERN (grep -E) gives: a failure for any other reason (a missing file) does not count.
fails_with() {
	fw_desc=$1 fw_pat=$2
	shift 2
	if "$@" >"$TMP/fw.out" 2>&1; then
		fw_st=1
	else
		grep -q -E -e "$fw_pat" "$TMP/fw.out"
		fw_st=$?
	fi
	[ $fw_st -eq 0 ]
	check "$fw_desc"
	[ $fw_st -eq 0 ] || sed 's/^/#   /' "$TMP/fw.out" | head -10
}

# one_line_error PATTERN: the last run failed, and its stderr is exactly one line that
# matches PATTERN (grep -E). Says why not on stdout.
one_line_error() {
	if [ "$run_rc" -eq 0 ]; then
		echo "exit status 0"
		return 1
	fi
	n=$(wc -l <"$TMP/run.err")
	if [ "$n" -ne 1 ] || [ "$(wc -c <"$TMP/run.err")" -le 1 ]; then
		echo "stderr has $n lines:"
		cat "$TMP/run.err"
		return 1
	fi
	if ! grep -q -E -e "$1" "$TMP/run.err"; then
		echo "stderr does not match /$1/: $(cat "$TMP/run.err")"
		return 1
	fi
}

# refused DESC PATTERN DIR COMMAND...: COMMAND (provstation ...) exits non-zero with one
# line on stderr matching PATTERN, and DIR (empty or absent before) is still empty or absent.
refused() {
	r_desc=$1 r_pat=$2 r_dir=$3
	shift 3
	run "$@"
	one_line_error "$r_pat" >"$TMP/r.why"
	r_st=$?
	if [ -n "$(ls -A "$r_dir" 2>/dev/null)" ]; then
		echo "$r_dir is not empty: $(ls -A "$r_dir" | tr '\n' ' ')" >>"$TMP/r.why"
		r_st=1
	fi
	[ $r_st -eq 0 ]
	check "$r_desc"
	[ $r_st -eq 0 ] || sed 's/^/#   /' "$TMP/r.why"
}

# newdir: a fresh empty directory in $d.
n_dirs=0
newdir() {
	n_dirs=$((n_dirs + 1))
	d="$TMP/empty$n_dirs"
	mkdir "$d"
}

# ---------------------------------------------------------------------------------------------
# ca init, for every key type
# ---------------------------------------------------------------------------------------------
for kt in default p256 p384 ed25519; do
	ca="$TMP/ca-$kt"
	if [ $kt = default ]; then
		ok "ca init ($kt key type)" "$PS" ca init --dir "$ca"
	else
		ok "ca init --key-type $kt" "$PS" ca init --dir "$ca" --key-type $kt
	fi
	[ -f "$ca/ca-private.key" ] && [ "$(mode "$ca/ca-private.key")" = 600 ]
	check "ca init ($kt): ca-private.key exists with mode 0600"
	[ -s "$ca/ca-cert.pem" ]
	check "ca init ($kt): ca-cert.pem exists"
	grep -q -- '-----BEGIN PRIVATE KEY-----' "$ca/ca-private.key"
	check "ca init ($kt): without a passphrase the key is unencrypted PKCS#8"
	openssl x509 -in "$ca/ca-cert.pem" -noout -text >"$TMP/ca-$kt.txt" 2>&1
	check "ca init ($kt): openssl reads the certificate"
	grep -q 'Version: 3 (0x2)' "$TMP/ca-$kt.txt"
	check "ca init ($kt): X.509 version 3"
	ext_is "$TMP/ca-$kt.txt" 'X509v3 Basic Constraints: critical' 'CA:TRUE'
	check "ca init ($kt): basicConstraints CA:TRUE, critical"
	ext_is "$TMP/ca-$kt.txt" 'X509v3 Key Usage: critical' 'Certificate Sign, CRL Sign'
	check "ca init ($kt): keyUsage Certificate Sign, CRL Sign, critical"
	grep -q 'X509v3 Subject Key Identifier' "$TMP/ca-$kt.txt"
	check "ca init ($kt): has a Subject Key Identifier"
	serial=$(openssl x509 -in "$ca/ca-cert.pem" -noout -serial | sed 's/^serial=//')
	echo "$serial" | grep -q -E '^[0-7][0-9A-F]{31}$'
	check "ca init ($kt): serial is 16 bytes, positive ($serial)"
	eval "serial_$kt=\$serial"
	case $kt in
	default | p256) alg='NIST CURVE: P-256' ;;
	p384) alg='NIST CURVE: P-384' ;;
	ed25519) alg='Public Key Algorithm: ED25519' ;;
	esac
	grep -q "$alg" "$TMP/ca-$kt.txt"
	check "ca init ($kt): the key is $alg"
	ok "ca init ($kt): the certificate is self-signed" \
		verify any "$ca/ca-cert.pem" "$ca/ca-cert.pem"
	ok "ca init ($kt): the private key belongs to the certificate" \
		key_matches "$ca/ca-private.key" "$ca/ca-cert.pem"
	ok "ca init ($kt): issue a device certificate from it" \
		"$PS" ca issue --ca-dir "$ca" --cn "dev-$kt.example.com" --out "$TMP/dev-$kt"
	ok "ca init ($kt): the device certificate verifies for sslclient" \
		verify sslclient "$ca/ca-cert.pem" "$TMP/dev-$kt/device-cert.pem"
done
# shellcheck disable=SC2154 # set by eval above
[ "$serial_default" != "$serial_p256" ]
check "two CAs get different serials"

ok "ca init --subject '/CN=Station CA/O=My Org/C=NO' --days 400" \
	"$PS" ca init --dir "$TMP/ca-named" --subject '/CN=Station CA/O=My Org/C=NO' --days 400
[ "$(subject_fields "$TMP/ca-named/ca-cert.pem" | tr '\n' '|')" = \
	'commonName=Station CA|organizationName=My Org|countryName=NO|' ]
check "ca init --subject: the CA has exactly that subject"
openssl x509 -in "$TMP/ca-named/ca-cert.pem" -noout -checkend $((399 * 86400)) >/dev/null &&
	! openssl x509 -in "$TMP/ca-named/ca-cert.pem" -noout -checkend $((401 * 86400)) >/dev/null
check "ca init --days 400: the CA expires in 400 days"
ok "issue from the named CA" \
	"$PS" ca issue --ca-dir "$TMP/ca-named" --cn dev-n.example.com --out "$TMP/dev-named"
[ "$(openssl x509 -in "$TMP/dev-named/device-cert.pem" -noout -issuer -nameopt compat)" = \
	'issuer=/CN=Station CA/O=My Org/C=NO' ]
check "the device certificate's issuer is the CA's subject"
! openssl x509 -in "$TMP/dev-named/device-cert.pem" -noout -checkend $((401 * 86400)) >/dev/null
check "a device certificate never outlives its CA (capped at the CA's 400 days)"

CA="$TMP/ca-default"

# ---------------------------------------------------------------------------------------------
# a CA key protected by a passphrase
# ---------------------------------------------------------------------------------------------
ENC="$TMP/ca-enc"
echo 'correct horse battery staple' >"$TMP/pass"
echo 'not the passphrase' >"$TMP/wrong-pass"
ok "ca init --passphrase-file" "$PS" ca init --dir "$ENC" --passphrase-file "$TMP/pass"
grep -q -- '-----BEGIN ENCRYPTED PRIVATE KEY-----' "$ENC/ca-private.key" &&
	! grep -q -- '-----BEGIN PRIVATE KEY-----' "$ENC/ca-private.key"
check "--passphrase-file: the CA key is encrypted PKCS#8"
[ "$(mode "$ENC/ca-private.key")" = 600 ]
check "--passphrase-file: the encrypted key is mode 0600"
ok "openssl decrypts the CA key with the passphrase" \
	openssl pkey -in "$ENC/ca-private.key" -passin "file:$TMP/pass" -noout
fails_with "openssl does not decrypt the CA key with another passphrase" 'bad decrypt' \
	openssl pkey -in "$ENC/ca-private.key" -passin "file:$TMP/wrong-pass" -noout
newdir
refused "issue with the wrong passphrase file: one-line error, nothing written" \
	'wrong passphrase' "$d" \
	"$PS" ca issue --ca-dir "$ENC" --cn dev-1.example.com --passphrase-file "$TMP/wrong-pass" \
	--out "$d"
newdir
refused "issue without any passphrase (no terminal): one-line error naming the ways to give it" \
	'encrypted.*PROVSTATION_CA_PASSPHRASE' "$d" \
	"$PS" ca issue --ca-dir "$ENC" --cn dev-1.example.com --out "$d"
ok "issue with PROVSTATION_CA_PASSPHRASE in the environment" \
	env PROVSTATION_CA_PASSPHRASE='correct horse battery staple' \
	"$PS" ca issue --ca-dir "$ENC" --cn dev-env.example.com --out "$TMP/dev-env" </dev/null
ok "the device certificate from the encrypted CA verifies" \
	verify sslclient "$ENC/ca-cert.pem" "$TMP/dev-env/device-cert.pem"
ok "issue with the right --passphrase-file" \
	"$PS" ca issue --ca-dir "$ENC" --cn dev-file.example.com --passphrase-file "$TMP/pass" \
	--out "$TMP/dev-file"
printf '[ca]\npassphrase_file = %s\n' "$TMP/pass" >"$TMP/pass.conf"
ok "issue with [ca] passphrase_file from --config" \
	"$PS" ca issue --config "$TMP/pass.conf" --ca-dir "$ENC" --cn dev-conf.example.com \
	--out "$TMP/dev-conf"
newdir
refused "issue with the wrong passphrase file while the environment has the right one" \
	'wrong passphrase' "$d" \
	env PROVSTATION_CA_PASSPHRASE='correct horse battery staple' \
	"$PS" ca issue --ca-dir "$ENC" --cn dev-1.example.com --passphrase-file "$TMP/wrong-pass" \
	--out "$d"
: >"$TMP/empty-pass"
newdir
refused "ca init with an empty passphrase file is refused and makes no CA" \
	'empty' "$d" "$PS" ca init --dir "$d/ca" --passphrase-file "$TMP/empty-pass"

# ---------------------------------------------------------------------------------------------
# an existing CA is never overwritten
# ---------------------------------------------------------------------------------------------
(cd "$CA" && sha256sum ca-private.key ca-cert.pem) >"$TMP/ca.sum"
run "$PS" ca init --dir "$CA"
one_line_error "$CA" >"$TMP/why"
check "ca init over an existing CA: non-zero exit, one line naming the directory"
sed 's/^/#   /' "$TMP/why"
run "$PS" ca init --dir "$CA" --key-type ed25519 --passphrase-file "$TMP/pass"
one_line_error "$CA" >"$TMP/why"
check "ca init over an existing CA with another key type and a passphrase: refused as well"
sed 's/^/#   /' "$TMP/why"
ok "the existing CA key and certificate are unchanged" \
	sh -c 'cd "$1" && sha256sum -c --quiet "$2"' sh "$CA" "$TMP/ca.sum"
[ "$(ls -A "$CA" | tr '\n' ' ')" = "ca-cert.pem ca-private.key " ]
check "the CA directory holds nothing new"
[ "$(mode "$CA/ca-private.key")" = 600 ]
check "the existing CA key keeps mode 0600"
mkdir "$TMP/ca-certonly"
cp "$CA/ca-cert.pem" "$TMP/ca-certonly/"
run "$PS" ca init --dir "$TMP/ca-certonly"
one_line_error "ca-certonly" >"$TMP/why"
check "ca init into a directory holding only ca-cert.pem is refused"
sed 's/^/#   /' "$TMP/why"
[ ! -e "$TMP/ca-certonly/ca-private.key" ] &&
	cmp -s "$CA/ca-cert.pem" "$TMP/ca-certonly/ca-cert.pem"
check "... and leaves that directory as it was"

# ---------------------------------------------------------------------------------------------
# ca issue: a device certificate
# ---------------------------------------------------------------------------------------------
OUT="$TMP/dev1"
ok "ca issue --cn dev-1.example.com" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --out "$OUT"
[ -f "$OUT/device-private.key" ] && [ "$(mode "$OUT/device-private.key")" = 600 ]
check "device-private.key exists with mode 0600"
[ -s "$OUT/device-cert.pem" ]
check "device-cert.pem exists"
ok "the device certificate verifies for sslclient against the CA" \
	verify sslclient "$CA/ca-cert.pem" "$OUT/device-cert.pem"
fails_with "the device certificate does not verify for sslserver" 'unsuitable certificate purpose' \
	verify sslserver "$CA/ca-cert.pem" "$OUT/device-cert.pem"
fails_with "the device certificate does not verify against another CA" \
	'unable to get local issuer certificate' \
	verify sslclient "$TMP/ca-p256/ca-cert.pem" "$OUT/device-cert.pem"
ext_text "$OUT/device-cert.pem" "$TMP/dev1.ext"
check "openssl reads the device certificate's extensions"
ext_is "$TMP/dev1.ext" 'X509v3 Basic Constraints: critical' 'CA:FALSE'
check "device: basicConstraints CA:FALSE, critical"
ext_is "$TMP/dev1.ext" 'X509v3 Key Usage: critical' 'Digital Signature'
check "device: keyUsage Digital Signature (only), critical"
ext_is "$TMP/dev1.ext" 'X509v3 Extended Key Usage:' 'TLS Web Client Authentication'
check "device: extendedKeyUsage TLS Web Client Authentication (only)"
grep -q 'X509v3 Subject Key Identifier' "$TMP/dev1.ext"
check "device: has a Subject Key Identifier"
aki=$(awk '/X509v3 Authority Key Identifier/ { getline; sub(/^[ \t]*(keyid:)?/, ""); print }' \
	"$TMP/dev1.ext")
ski=$(awk '/X509v3 Subject Key Identifier/ { getline; sub(/^[ \t]*/, ""); print }' \
	"$TMP/ca-default.txt")
[ -n "$aki" ] && [ "$aki" = "$ski" ]
check "device: Authority Key Identifier is the CA's Subject Key Identifier ($aki)"
grep -q 'Basic Constraints' "$TMP/dev1.ext" && ! grep -q 'Subject Alternative Name' "$TMP/dev1.ext"
check "device: no subjectAltName"
ok "device-private.key holds the key of device-cert.pem" \
	key_matches "$OUT/device-private.key" "$OUT/device-cert.pem"
a=$(key_pub "$OUT/device-private.key") && b=$(cert_pub "$TMP/dev-p256/device-cert.pem") &&
	[ -n "$a" ] && [ -n "$b" ] && [ "$a" != "$b" ]
check "the comparison tells keys apart: another device's certificate has another key"
subject_fields "$OUT/device-cert.pem" >"$TMP/dev1.subj"
[ "$(cat "$TMP/dev1.subj")" = "commonName=dev-1.example.com" ]
check "device: subject is just CN=dev-1.example.com without a configured subject"
openssl x509 -in "$OUT/device-cert.pem" -noout -serial | grep -q -E '^serial=[0-7][0-9A-F]{31}$'
check "device: serial is 16 bytes, positive"
openssl x509 -in "$OUT/device-cert.pem" -noout -text | grep -q 'NIST CURVE: P-256'
check "device: the default key is P-256"
openssl x509 -in "$OUT/device-cert.pem" -noout -checkend $((3640 * 86400)) >/dev/null &&
	! openssl x509 -in "$OUT/device-cert.pem" -noout -checkend $((3660 * 86400)) >/dev/null
check "device: valid about 10 years by default"

ok "ca issue --key-type ed25519" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-ed.example.com --key-type ed25519 --out "$TMP/dev-ed"
openssl x509 -in "$TMP/dev-ed/device-cert.pem" -noout -text |
	grep -q 'Public Key Algorithm: ED25519'
check "ca issue --key-type ed25519: the device key is Ed25519"
ok "ca issue --key-type ed25519: key matches and verifies" \
	sh -c 'openssl pkey -in "$1/device-private.key" -pubout >"$1/a" &&
		openssl x509 -in "$1/device-cert.pem" -noout -pubkey >"$1/b" && cmp "$1/a" "$1/b" &&
		openssl verify -purpose sslclient -CAfile "$2" "$1/device-cert.pem"' \
	sh "$TMP/dev-ed" "$CA/ca-cert.pem"

ok "ca issue --days 30" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-30.example.com --days 30 --out "$TMP/dev-30"
openssl x509 -in "$TMP/dev-30/device-cert.pem" -noout -checkend $((29 * 86400)) >/dev/null &&
	! openssl x509 -in "$TMP/dev-30/device-cert.pem" -noout -checkend $((31 * 86400)) >/dev/null
check "ca issue --days 30: the certificate expires in 30 days"

# Issuing again into the same directory: refused without --force, the files kept.
(cd "$OUT" && sha256sum device-private.key device-cert.pem) >"$TMP/dev1.sum"
run "$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --out "$OUT"
one_line_error 'already exists' >"$TMP/why"
check "ca issue into a directory that already holds a device identity: refused, one line"
sed 's/^/#   /' "$TMP/why"
ok "... and the device key and certificate are unchanged" \
	sh -c 'cd "$1" && sha256sum -c --quiet "$2"' sh "$OUT" "$TMP/dev1.sum"
ok "ca issue --force replaces them" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --out "$OUT" --force
! (cd "$OUT" && sha256sum -c --quiet "$TMP/dev1.sum" >/dev/null 2>&1) &&
	[ "$(mode "$OUT/device-private.key")" = 600 ] &&
	key_matches "$OUT/device-private.key" "$OUT/device-cert.pem"
check "--force: a new key (mode 0600) and its certificate"

# Subject fields from the configuration file.
cat >"$TMP/station.conf" <<'EOF'
[device]
subject = /O=My Organization/OU=My Unit/C=NO/L=Oslo/emailAddress=me@example.com
EOF
ok "ca issue --config station.conf with a [device] subject" \
	"$PS" ca issue --config "$TMP/station.conf" --ca-dir "$CA" --cn dev-1.example.com \
	--out "$TMP/dev-conf-subject"
subject_fields "$TMP/dev-conf-subject/device-cert.pem" >"$TMP/conf.subj"
for f in 'commonName=dev-1.example.com' 'organizationName=My Organization' \
	'organizationalUnitName=My Unit' 'countryName=NO' 'localityName=Oslo' \
	'emailAddress=me@example.com'; do
	grep -q -x -F "$f" "$TMP/conf.subj"
	check "[device] subject: the certificate has $f"
done
[ "$(wc -l <"$TMP/conf.subj")" -eq 6 ]
check "[device] subject: exactly those six fields"
ok "[device] subject: the certificate still verifies for sslclient" \
	verify sslclient "$CA/ca-cert.pem" "$TMP/dev-conf-subject/device-cert.pem"
ok "ca issue --subject on the command line" \
	"$PS" ca issue --config "$TMP/station.conf" --ca-dir "$CA" --cn dev-2.example.com \
	--subject '/O=Other Org' --out "$TMP/dev-cli-subject"
subject_fields "$TMP/dev-cli-subject/device-cert.pem" | sort >"$TMP/cli.subj"
printf 'commonName=dev-2.example.com\norganizationName=Other Org\n' | sort |
	cmp -s - "$TMP/cli.subj"
check "--subject replaces the configured subject"

# ---------------------------------------------------------------------------------------------
# ca server-cert
# ---------------------------------------------------------------------------------------------
S="$TMP/server"
ok "ca server-cert --domain mender.example.com --domain alt.example.com --ip 127.0.0.1" \
	"$PS" ca server-cert --ca-dir "$CA" --domain mender.example.com --domain alt.example.com \
	--ip 127.0.0.1 --out "$S"
[ -f "$S/server-private.key" ] && [ "$(mode "$S/server-private.key")" = 600 ]
check "server-private.key exists with mode 0600"
[ -s "$S/server-cert.pem" ]
check "server-cert.pem exists"
ok "the server certificate verifies for sslserver" \
	verify sslserver "$CA/ca-cert.pem" "$S/server-cert.pem"
fails_with "the server certificate does not verify for sslclient" 'unsuitable certificate purpose' \
	verify sslclient "$CA/ca-cert.pem" "$S/server-cert.pem"
for h in mender.example.com alt.example.com; do
	ok "the server certificate is valid for host $h" \
		verify sslserver "$CA/ca-cert.pem" "$S/server-cert.pem" -verify_hostname $h
done
ok "the server certificate is valid for IP 127.0.0.1" \
	verify sslserver "$CA/ca-cert.pem" "$S/server-cert.pem" -verify_ip 127.0.0.1
fails_with "the server certificate is not valid for other.example.com" 'hostname mismatch' \
	verify sslserver "$CA/ca-cert.pem" "$S/server-cert.pem" -verify_hostname other.example.com
fails_with "the server certificate is not valid for IP 127.0.0.2" 'IP address mismatch' \
	verify sslserver "$CA/ca-cert.pem" "$S/server-cert.pem" -verify_ip 127.0.0.2
ext_text "$S/server-cert.pem" "$TMP/server.ext"
check "openssl reads the server certificate's extensions"
for san in DNS:mender.example.com DNS:alt.example.com 'IP Address:127.0.0.1'; do
	awk '/X509v3 Subject Alternative Name/ { getline; print }' "$TMP/server.ext" |
		tr ',' '\n' | sed 's/^ *//' | grep -q -x -F "$san"
	check "server: subjectAltName has $san"
done
ext_is "$TMP/server.ext" 'X509v3 Extended Key Usage:' 'TLS Web Server Authentication'
check "server: extendedKeyUsage TLS Web Server Authentication (only)"
ext_is "$TMP/server.ext" 'X509v3 Basic Constraints: critical' 'CA:FALSE'
check "server: basicConstraints CA:FALSE, critical"
ext_is "$TMP/server.ext" 'X509v3 Key Usage: critical' 'Digital Signature'
check "server: keyUsage Digital Signature, critical (EC key)"
[ "$(subject_fields "$S/server-cert.pem")" = "commonName=mender.example.com" ]
check "server: subject is CN=mender.example.com"
ok "server-private.key holds the key of server-cert.pem" \
	key_matches "$S/server-private.key" "$S/server-cert.pem"
openssl x509 -in "$S/server-cert.pem" -noout -checkend $((700 * 86400)) >/dev/null &&
	! openssl x509 -in "$S/server-cert.pem" -noout -checkend $((740 * 86400)) >/dev/null
check "server: valid about 2 years by default"

A="$TMP/ambassador"
ok "ca server-cert --ambassador" \
	"$PS" ca server-cert --ca-dir "$CA" --domain mender.example.com --ambassador --out "$A"
[ -f "$A/server.key" ] && [ "$(mode "$A/server.key")" = 600 ]
check "--ambassador: server.key exists with mode 0600"
[ -s "$A/server.crt" ]
check "--ambassador: server.crt exists"
cmp -s "$A/tenant.ca.pem" "$CA/ca-cert.pem"
check "--ambassador: tenant.ca.pem is identical to ca-cert.pem"
[ "$(ls -A "$A" | sort | tr '\n' ' ')" = "server.crt server.key tenant.ca.pem " ]
check "--ambassador: exactly server.crt, server.key, tenant.ca.pem"
ok "--ambassador: server.crt verifies for sslserver against tenant.ca.pem" \
	verify sslserver "$A/tenant.ca.pem" "$A/server.crt" -verify_hostname mender.example.com
ok "--ambassador: server.key holds the key of server.crt" \
	key_matches "$A/server.key" "$A/server.crt"
(cd "$A" && sha256sum server.key server.crt tenant.ca.pem) >"$TMP/amb.sum"
run "$PS" ca server-cert --ca-dir "$CA" --domain mender.example.com --ambassador --out "$A"
one_line_error 'already exists' >"$TMP/why"
check "--ambassador again into the same directory: refused, one line"
sed 's/^/#   /' "$TMP/why"
ok "... and the files are unchanged" \
	sh -c 'cd "$1" && sha256sum -c --quiet "$2"' sh "$A" "$TMP/amb.sum"

# ---------------------------------------------------------------------------------------------
# bad input: non-zero exit, one line on stderr naming the problem, nothing written
# ---------------------------------------------------------------------------------------------
newdir
refused "issue --cn '' is refused" 'commonName is empty' "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn '' --out "$d"
cn65=$(printf '%065d' 0 | tr 0 a)
newdir
refused "issue with a 65-character CN is refused" 'commonName.*65.*64' "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn "$cn65" --out "$d"
cn64=$(printf '%064d' 0 | tr 0 a)
ok "issue with a 64-character CN is accepted" \
	"$PS" ca issue --ca-dir "$CA" --cn "$cn64" --out "$TMP/dev-cn64"
[ "$(subject_fields "$TMP/dev-cn64/device-cert.pem")" = "commonName=$cn64" ]
check "the 64-character CN is in the certificate"
newdir
refused "issue with a tab in the CN is refused" 'commonName.*control character' "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn "$(printf 'a\tb')" --out "$d"
newdir
refused "issue with a newline in the CN is refused" 'commonName.*control character' "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn "$(printf 'a\nb')" --out "$d"
newdir
refused "issue --key-type dsa is refused" "unknown key type 'dsa'" "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --key-type dsa --out "$d"
newdir
refused "init --key-type dsa is refused and makes no CA" "unknown key type 'dsa'" "$d" \
	"$PS" ca init --dir "$d/ca" --key-type dsa
newdir
refused "issue --subject O=no-slash is refused" "subject 'O=no-slash'" "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --subject O=no-slash --out "$d"
newdir
refused "init --subject O=no-slash is refused and makes no CA" "subject 'O=no-slash'" "$d" \
	"$PS" ca init --dir "$d/ca" --subject O=no-slash
newdir
refused "issue --subject /C=Norway (country not 2 letters) is refused" "C=Norway" "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --subject /C=Norway --out "$d"
newdir
refused "init --subject /C=Norway is refused and makes no CA" "C=Norway" "$d" \
	"$PS" ca init --dir "$d/ca" --subject /C=Norway
newdir
refused "issue --subject with a CN is refused" "sets CN" "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --subject /CN=evil/O=x --out "$d"
newdir
refused "issue --subject with an unknown field is refused" "unknown field name 'XX'" "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --subject /XX=y --out "$d"
printf '[device]\nsubject = O=no-slash\n' >"$TMP/bad-subject.conf"
newdir
refused "a bad [device] subject in the configuration is refused" "subject" "$d" \
	"$PS" ca issue --config "$TMP/bad-subject.conf" --ca-dir "$CA" --cn dev-1.example.com \
	--out "$d"
newdir
refused "issue from a missing CA directory is refused" "$TMP/no-such-ca.*does not exist" "$d" \
	"$PS" ca issue --ca-dir "$TMP/no-such-ca" --cn dev-1.example.com --out "$d"
[ ! -e "$TMP/no-such-ca" ]
check "... and the missing CA directory is not created"
mkdir "$TMP/ca-half"
cp -p "$CA/ca-private.key" "$TMP/ca-half/"
newdir
refused "issue from a half-made CA (ca-cert.pem removed) is refused" \
	'ca-half.*incomplete.*ca-cert\.pem' "$d" \
	"$PS" ca issue --ca-dir "$TMP/ca-half" --cn dev-1.example.com --out "$d"
mkdir "$TMP/ca-half2"
cp -p "$CA/ca-cert.pem" "$TMP/ca-half2/"
newdir
refused "issue from a half-made CA (ca-private.key removed) is refused" \
	'ca-half2.*incomplete.*ca-private\.key' "$d" \
	"$PS" ca issue --ca-dir "$TMP/ca-half2" --cn dev-1.example.com --out "$d"
mkdir "$TMP/ca-loose"
cp -p "$CA/ca-private.key" "$CA/ca-cert.pem" "$TMP/ca-loose/"
chmod 644 "$TMP/ca-loose/ca-private.key"
newdir
refused "issue with a CA key of mode 0644 is refused" 'readable by group or others' "$d" \
	"$PS" ca issue --ca-dir "$TMP/ca-loose" --cn dev-1.example.com --out "$d"
chmod 640 "$TMP/ca-loose/ca-private.key"
newdir
refused "issue with a CA key of mode 0640 is refused" 'readable by group or others' "$d" \
	"$PS" ca issue --ca-dir "$TMP/ca-loose" --cn dev-1.example.com --out "$d"
mkdir "$TMP/ca-mixed"
cp -p "$CA/ca-private.key" "$TMP/ca-mixed/"
cp -p "$TMP/ca-p256/ca-cert.pem" "$TMP/ca-mixed/"
newdir
refused "issue from a CA whose key and certificate do not belong together is refused" \
	'does not belong' "$d" \
	"$PS" ca issue --ca-dir "$TMP/ca-mixed" --cn dev-1.example.com --out "$d"
newdir
refused "server-cert --ip 300.1.1.1 is refused" "'300\.1\.1\.1'.*not an IP address" "$d" \
	"$PS" ca server-cert --ca-dir "$CA" --domain mender.example.com --ip 300.1.1.1 --out "$d"
newdir
refused "server-cert --domain with a space is refused" 'not a DNS name' "$d" \
	"$PS" ca server-cert --ca-dir "$CA" --domain 'mender example.com' --out "$d"
newdir
refused "server-cert --ambassador --ip 300.1.1.1 writes nothing either" "300\.1\.1\.1" "$d" \
	"$PS" ca server-cert --ca-dir "$CA" --domain mender.example.com --ip 300.1.1.1 \
	--ambassador --out "$d"
newdir
refused "server-cert without --domain is refused" '--domain is required' "$d" \
	"$PS" ca server-cert --ca-dir "$CA" --out "$d"
newdir
refused "issue --days 0 is refused" 'days' "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --days 0 --out "$d"
newdir
refused "issue --ip (server-cert only) is refused" '--ip' "$d" \
	"$PS" ca issue --ca-dir "$CA" --cn dev-1.example.com --ip 127.0.0.1 --out "$d"

done_testing
