#!/bin/sh
# provision_images.sh — `provstation provision` on every image layout scripts/mkmenderimg.sh
# builds (MBR with boot, GPT without boot, rootfs B empty / full / unformatted, five and six
# partitions, conf_target = rootfs, a 16 GiB sparse image), each result checked with tools
# provstation does not share code with: every ext partition copied out with dd and checked by
# `e2fsck -fn`, files read back with `debugfs`, keys and certificates with `openssl`,
# mender.conf with python3's json, the image through `mender-artifact` where it reads the
# layout, and the audit rows through `provstation export`. Then each image is provisioned a
# second time: the files are replaced, nothing is left behind.
. "$SRCDIR/tests/lib.sh"
need openssl sha256sum dd python3 bash e2fsck debugfs sfdisk mkfs.ext4 mkfs.vfat mkswap

unset PROVSTATION_CONFIG PROVSTATION_CA_PASSPHRASE
PS=$PROVSTATION
MKIMG=$SRCDIR/scripts/mkmenderimg.sh
PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C
DB=$TMP/audit.db
CA=$TMP/ca
DOMAIN=devices.example.com

# run COMMAND...: stdin not a terminal, output in $TMP/run.out and run.err, status in $run_rc
run() {
	"$@" >"$TMP/run.out" 2>"$TMP/run.err" </dev/null
	run_rc=$?
	return $run_rc
}
# run_ok COMMAND...: run it; on failure keep its output for the failing check's report
run_ok() {
	run "$@" && return 0
	why "exit status $run_rc: $*"
	cat "$TMP/run.out" "$TMP/run.err" | head -10 >>"$TMP/why"
	return 1
}
# verdict DESC: the status of the previous command as a test; on failure show $TMP/why.
verdict() {
	v_st=$?
	(exit $v_st)
	check "$1"
	if [ $v_st -ne 0 ] && [ -s "$TMP/why" ]; then
		head -15 "$TMP/why" | sed 's/^/#   /'
	fi
	: >"$TMP/why"
	return $v_st
}
: >"$TMP/why"
why() { echo "$*" >>"$TMP/why"; }

# same GOT WANT WHAT: the two strings are equal; else say so in $TMP/why
same() {
	[ "$1" = "$2" ] && return 0
	why "$3: got  '$1'"
	why "$3: want '$2'"
	return 1
}
# skip DESC REASON: a test that cannot run here, reported as skipped with the reason
skip() {
	tap_n=$((tap_n + 1))
	echo "ok $tap_n - $1 # SKIP $2"
}
HAVE_MA=no
command -v mender-artifact >/dev/null 2>&1 && HAVE_MA=yes

MiB=1048576
# region IMG START LENGTH [OUT]: the bytes of IMG from START, to OUT (sparse) or stdout.
region() {
	if [ $# -ge 4 ]; then
		dd if="$1" of="$4" bs=$MiB iflag=skip_bytes,count_bytes skip="$2" count="$3" \
			conv=sparse status=none
	else
		dd if="$1" bs=$MiB iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none
	fi
}
region_sha() { region "$@" | sha256sum | cut -d' ' -f1; }

# dfs FS CMD: debugfs's answer to one request on an extracted filesystem
dfs() { debugfs -R "$2" "$1" 2>/dev/null; }
# inode_is FS PATH MODE UID GID: the path is a regular file with that mode and owner
inode_is() {
	i_st=$(dfs "$1" "stat $2")
	i_type=$(printf '%s\n' "$i_st" | sed -n 's/.*Type: *\([a-z]*\).*/\1/p')
	i_mode=$(printf '%s\n' "$i_st" | sed -n 's/.*Mode: *\([0-7]*\).*/\1/p')
	i_uid=$(printf '%s\n' "$i_st" | sed -n 's/^User: *\([0-9]*\).*/\1/p')
	i_gid=$(printf '%s\n' "$i_st" | sed -n 's/.*Group: *\([0-9]*\).*/\1/p')
	[ "$i_type" = regular ] && [ "$i_mode" = "$3" ] && [ "$i_uid" = "$4" ] &&
		[ "$i_gid" = "$5" ] && return 0
	why "$2: type '$i_type' mode '$i_mode' owner '$i_uid:$i_gid', want regular $3 $4:$5"
	return 1
}

# The public key of a certificate and of a private key, as PEM SPKI.
cert_pub() { openssl x509 -in "$1" -noout -pubkey; }
key_pub() { openssl pkey -in "$1" -pubout; }
key_matches() {
	a=$(key_pub "$1") && b=$(cert_pub "$2") && [ -n "$a" ] && [ "$a" = "$b" ]
}
cert_serial() { openssl x509 -in "$1" -noout -serial | sed 's/^serial=//' | tr 'A-F' 'a-f'; }
spki_sha256() {
	cert_pub "$1" | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1
}
cert_cn() {
	openssl x509 -in "$1" -noout -subject -nameopt multiline |
		sed -n 's/^ *commonName *= *//p'
}
cert_o() {
	openssl x509 -in "$1" -noout -subject -nameopt multiline |
		sed -n 's/^ *organizationName *= *//p'
}

# conf_check ORIG NEW MODE: NEW (mender.conf after provisioning) is a JSON object that keeps
# every key of ORIG (the file before; sub-keys of objects too) and has the station keys.
# MODE: "plain", or "servercert" (ServerCertificate expected too).
cat >"$TMP/conf_check.py" <<'EOF'
import json, sys
orig_path, new_path, mode = sys.argv[1:4]
with open(orig_path) as f:
    orig = json.load(f)
with open(new_path) as f:
    new = json.load(f)
bad = []
if not isinstance(new, dict):
    sys.exit("the new mender.conf is not a JSON object")
want = {("HttpsClient", "Certificate"): "/data/mender/mender-cert.pem",
        ("HttpsClient", "Key"): "/data/mender/mender-cert-private.pem",
        ("Security", "AuthPrivateKey"): "/data/mender/mender-cert-private.pem"}
if mode == "servercert":
    want[(None, "ServerCertificate")] = "/data/mender/server.crt"
def get_ci(obj, key):
    # mender-client matches key names case-insensitively
    if not isinstance(obj, dict):
        return None
    found = [v for k, v in obj.items() if k.lower() == key.lower()]
    return found[0] if len(found) == 1 else None
def no_case_twins(obj, where):
    if isinstance(obj, dict):
        seen = {}
        for k, v in obj.items():
            if k.lower() in seen:
                bad.append("%s%s and %s%s differ only in case" % (where, seen[k.lower()], where, k))
            seen[k.lower()] = k
            no_case_twins(v, where + k + ".")
no_case_twins(new, "")
for (sec, key), value in want.items():
    obj = new if sec is None else get_ci(new, sec)
    got = get_ci(obj, key)
    if got != value:
        bad.append("%s.%s is %r, want %r" % (sec, key, got, value))
station = {(sec + "." if sec else "") + key for sec, key in want}
def keep(o, n, where):
    for k, v in o.items():
        if k not in n:
            bad.append("%s%s was dropped" % (where, k))
        elif isinstance(v, dict) and isinstance(n[k], dict):
            keep(v, n[k], where + k + ".")
        elif n[k] != v and where + k not in station:
            bad.append("%s%s changed from %r to %r" % (where, k, v, n[k]))
keep(orig, new, "")
if bad:
    sys.exit("; ".join(bad))
EOF
conf_check() { python3 "$TMP/conf_check.py" "$@" >>"$TMP/why" 2>&1; }

# audit_rows SERIAL: the exported rows of that device, one per line:
# "state cert_serial common_name pubkey_sha256 device_serial"
cat >"$TMP/rows.py" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
for r in rows:
    if r["device_serial"] == sys.argv[2]:
        print(r["state"], r["cert_serial"], r["common_name"], r["pubkey_sha256"],
              r["device_serial"])
EOF
audit_rows() {
	"$PS" export --format csv --db "$DB" >"$TMP/export.csv" 2>>"$TMP/why" &&
		python3 "$TMP/rows.py" "$TMP/export.csv" "$1"
}

# ---------------------------------------------------------------------------------------------
# the CA, a server CA bundle, the configurations
# ---------------------------------------------------------------------------------------------
ok "ca init" "$PS" ca init --dir "$CA"
ok "a second CA whose certificate serves as the server CA bundle" \
	"$PS" ca init --dir "$TMP/server-ca" --subject "/CN=Mender server CA/O=Example"
SERVER_PEM=$TMP/server-ca/ca-cert.pem

# write_config NAME KEY_TYPE CONF_TARGET SERVER_CERT(yes|no)
write_config() {
	{
		printf '[station]\nid = test-station\ndatabase = %s\n' "$DB"
		printf '[ca]\ndir = %s\n' "$CA"
		printf '[device]\ncommon_name = {serial}.%s\n' "$DOMAIN"
		printf 'subject = /O=Example Devices/C=NO\n'
		[ "$2" = default ] || printf 'key_type = %s\n' "$2"
		printf '[mender]\nconf_target = %s\n' "$3"
		[ "$4" = no ] || printf 'server_certificate = %s\n' "$SERVER_PEM"
	} >"$TMP/$1.conf"
}

# ---------------------------------------------------------------------------------------------
# one layout: build, provision twice, check everything after each
# ---------------------------------------------------------------------------------------------
# part_list NAME: "num start size fstype label role" lines of the script's output
part_list() { sed 's/^p//' "$TMP/$1.parts"; }
# part NAME ROLE: sets pnum pstart psize pfstype to the partition with that role
part() {
	pnum=- pstart=0 psize=0 pfstype=none
	# shellcheck disable=SC2034 # the caller uses them
	read -r pnum pstart psize pfstype <<-EOF
		$(awk -v r="$2" '$6 == r { sub(/^p/, "", $1); print $1, $2, $3, $4 }' "$TMP/$1.parts")
	EOF
}

# check_image NAME SERIAL KEY_TYPE CONF_TARGET SERVER_CERT ROUND
check_image() {
	n=$1 serial=$2 kt=$3 target=$4 scert=$5 round=$6
	img=$TMP/$n.img
	t="$n (round $round)"
	cn=$serial.$DOMAIN
	w=$TMP/$n.r$round
	mkdir -p "$w"

	# every ext4 partition, copied out with dd, is clean for e2fsck
	part_list "$n" | while read -r num start size fstype _label role; do
		[ "$fstype" = ext4 ] || continue
		region "$img" "$start" "$size" "$w/p$num.fs"
		if e2fsck -fn "$w/p$num.fs" >"$w/p$num.fsck" 2>&1; then
			echo "ok p$num"
		else
			echo "e2fsck -fn p$num ($role) exit $?: $(tail -n 3 "$w/p$num.fsck" | tr '\n' ' ')"
		fi
	done >"$w/fsck"
	! grep -v '^ok ' "$w/fsck" >>"$TMP/why" && [ -s "$w/fsck" ]
	verdict "$t: e2fsck -fn is clean on every ext4 partition ($(grep -c '^ok' "$w/fsck"))"

	part "$n" data
	dnum=$pnum dstart=$pstart dsize=$psize
	D=$w/p$dnum.fs

	# the files: modes, owners, contents
	inode_is "$D" /mender/mender-cert-private.pem 0600 0 0
	verdict "$t: /mender/mender-cert-private.pem is 0600 root:root (debugfs)"
	inode_is "$D" /mender/mender-cert.pem 0644 0 0
	verdict "$t: /mender/mender-cert.pem is 0644 root:root (debugfs)"
	dfs "$D" "cat /mender/mender-cert-private.pem" >"$w/key.pem"
	dfs "$D" "cat /mender/mender-cert.pem" >"$w/cert.pem"
	dfs "$D" "cat /mender/mender.conf" >"$w/data.conf"
	dfs "$D" "ls /mender" >"$w/ls"
	key_matches "$w/key.pem" "$w/cert.pem"
	verdict "$t: the key in the image belongs to the certificate (openssl)"
	openssl verify -purpose sslclient -CAfile "$CA/ca-cert.pem" "$w/cert.pem" >>"$TMP/why" 2>&1
	verdict "$t: openssl verify -purpose sslclient: the certificate chains to the CA"
	got_cn=$(cert_cn "$w/cert.pem")
	same "$got_cn" "$cn" commonName
	verdict "$t: the commonName is the template's ($cn)"
	[ "$(cert_o "$w/cert.pem")" = "Example Devices" ]
	verdict "$t: the subject carries the configured O=Example Devices"
	case $kt in
	default | p256) alg='NIST CURVE: P-256' ;;
	p384) alg='NIST CURVE: P-384' ;;
	ed25519) alg='Public Key Algorithm: ED25519' ;;
	rsa3072) alg='Public-Key: (3072 bit)' ;;
	esac
	openssl x509 -in "$w/cert.pem" -noout -text | grep -q -F "$alg"
	verdict "$t: the device key is $kt ($alg)"
	grep -q -- '-----BEGIN PRIVATE KEY-----' "$w/key.pem"
	verdict "$t: the device key is unencrypted PKCS#8 PEM"
	dfs "$D" "cat /mender/device_type" >"$w/device_type"
	[ "$(cat "$w/device_type")" = device_type=raspberrypi4 ] &&
		inode_is "$D" /mender/device_type 0444 0 0
	verdict "$t: /mender/device_type is untouched (content, 0444 root:root)"
	! grep -q '\.provstation-new-' "$w/ls" && grep -q 'mender-cert\.pem' "$w/ls"
	verdict "$t: no .provstation-new-* names left in /mender (debugfs ls)"

	# mender.conf: where the settings went, and the other keys kept
	if [ "$target" = data ]; then
		conf_check "$TMP/$n.data.conf0" "$w/data.conf" \
			"$([ "$scert" = yes ] && echo servercert || echo plain)"
		verdict "$t: data mender.conf keeps every key (RootfsPartA/B) and has the station keys"
		inode_is "$D" /mender/mender.conf 0600 0 0
		verdict "$t: data mender.conf is still 0600 root:root"
	else
		cmp -s "$TMP/$n.data.conf0" "$w/data.conf"
		verdict "$t: conf_target=rootfs: the data partition's mender.conf is unchanged"
		for role in rootfsA rootfsB; do
			part "$n" "$role"
			rnum=$pnum
			if [ ! -f "$TMP/$n.$role.conf0" ]; then
				continue # empty or unformatted: checked below to be unchanged
			fi
			dfs "$w/p$rnum.fs" "cat /etc/mender/mender.conf" >"$w/$role.conf"
			conf_check "$TMP/$n.$role.conf0" "$w/$role.conf" \
				"$([ "$scert" = yes ] && echo servercert || echo plain)"
			verdict "$t: conf_target=rootfs: $role /etc/mender/mender.conf keeps every key and has the station keys"
			inode_is "$w/p$rnum.fs" /etc/mender/mender.conf 0600 0 0
			verdict "$t: $role /etc/mender/mender.conf is still 0600 root:root"
		done
	fi
	if [ "$scert" = yes ]; then
		dfs "$D" "cat /mender/server.crt" >"$w/server.crt"
		cmp -s "$SERVER_PEM" "$w/server.crt" && inode_is "$D" /mender/server.crt 0644 0 0
		verdict "$t: /mender/server.crt is the configured bundle, 0644 root:root"
	fi

	# what must not change
	if [ "$target" = data ]; then
		[ "$(region_sha "$img" 0 "$dstart")" = "$(cat "$TMP/$n.head0")" ]
		verdict "$t: everything before the data partition (table, boot, rootfs A and B, extra) is unchanged"
		tail_start=$((dstart + dsize))
		[ "$(region_sha "$img" "$tail_start" $(($(stat -c %s "$img") - tail_start)))" = \
			"$(cat "$TMP/$n.tail0")" ]
		verdict "$t: everything after the data partition is unchanged"
	else
		part "$n" rootfsA
		[ "$(region_sha "$img" 0 "$pstart")" = "$(cat "$TMP/$n.head0")" ]
		verdict "$t: the table and the boot partition are unchanged"
		part "$n" rootfsB
		if [ ! -f "$TMP/$n.rootfsB.conf0" ]; then
			[ "$(region_sha "$img" "$pstart" "$psize")" = "$(cat "$TMP/$n.rootfsB.sha0")" ]
			verdict "$t: the empty rootfs B is skipped: byte-for-byte unchanged"
		fi
	fi

	# mender-artifact reads the image itself (it only knows four-partition layouts)
	nparts=$(wc -l <"$TMP/$n.parts")
	if [ $HAVE_MA = no ]; then
		skip "$t: mender-artifact cat" "mender-artifact is not installed"
	elif [ "$nparts" -ne 4 ]; then
		skip "$t: mender-artifact cat" "mender-artifact 3.9 reads only four-partition images, this one has $nparts"
	else
		mender-artifact cat "$img:/data/mender/mender-cert.pem" >"$w/ma-cert.pem" \
			2>>"$TMP/why" && cmp -s "$w/ma-cert.pem" "$w/cert.pem"
		verdict "$t: mender-artifact cat IMG:/data/mender/mender-cert.pem is the certificate"
		mender-artifact cat "$img:/data/mender/mender.conf" >"$w/ma.conf" \
			2>>"$TMP/why" && cmp -s "$w/ma.conf" "$w/data.conf"
		verdict "$t: mender-artifact cat IMG:/data/mender/mender.conf is what debugfs reads"
		if [ "$target" = rootfs ] && [ ! -f "$TMP/$n.rootfsB.conf0" ]; then
			skip "$t: mender-artifact cat IMG:/etc/mender/mender.conf" \
				"mender-artifact 3.9 fails on rootfs paths when rootfs B is empty"
		elif [ "$target" = rootfs ]; then
			mender-artifact cat "$img:/etc/mender/mender.conf" >"$w/ma-main.conf" \
				2>>"$TMP/why" && cmp -s "$w/ma-main.conf" "$w/rootfsA.conf"
			verdict "$t: mender-artifact cat IMG:/etc/mender/mender.conf is what debugfs reads in rootfs A"
		fi
	fi

	run_ok "$PS" verify --target "$img" --config "$TMP/$n.conf" --ca-dir "$CA"
	verdict "$t: provstation verify exits 0"

	# the audit rows of this device: one per provisioning; the last one is verified and is the
	# certificate in the image, every earlier one superseded by it (field service)
	img_serial=$(cert_serial "$w/cert.pem")
	echo "$img_serial" >"$w/serial"
	audit_rows "$serial" >"$w/rows"
	same "$(wc -l <"$w/rows")" "$round" "rows for $serial"
	verdict "$t: the export has $round row(s) for $serial"
	{ [ "$(tail -n 1 "$w/rows" | cut -d' ' -f1)" = verified ] &&
		! head -n -1 "$w/rows" | grep -v '^superseded ' >>"$TMP/why"; }
	verdict "$t: the newest row of $serial is verified, every earlier one superseded"
	want_row="verified $img_serial $cn $(spki_sha256 "$w/cert.pem") $serial"
	same "$(tail -n 1 "$w/rows")" "$want_row" "newest row"
	verdict "$t: the newest row has the device serial, commonName, cert serial (openssl x509 -serial) and pubkey_sha256 (sha256 of the DER SPKI)"
	grep -q "cert serial  $img_serial\$" "$TMP/$n.prov$round.out"
	verdict "$t: provision printed the serial of the certificate in the image"
}

# layout NAME KEY_TYPE CONF_TARGET SERVER_CERT MKMENDERIMG-OPTIONS...
layout() {
	n=$1 kt=$2 target=$3 scert=$4
	shift 4
	serial=SN-$n-0001
	img=$TMP/$n.img
	bash "$MKIMG" "$@" "$img" >"$TMP/$n.parts" 2>"$TMP/why"
	verdict "$n: mkmenderimg.sh $* ($(awk '{ printf "%s%s/%s/%s", sep, $1, $4, $6; sep=" " }' \
		"$TMP/$n.parts"))" || return 0
	write_config "$n" "$kt" "$target" "$scert"

	# before: the bytes that must stay, the mender.conf files to be merged
	part "$n" data
	dstart=$pstart dsize=$psize
	region "$img" "$dstart" "$dsize" "$TMP/$n.data0.fs"
	dfs "$TMP/$n.data0.fs" "cat /mender/mender.conf" >"$TMP/$n.data.conf0"
	if [ "$target" = data ]; then
		region_sha "$img" 0 "$dstart" >"$TMP/$n.head0"
		tail_start=$((dstart + dsize))
		region_sha "$img" "$tail_start" $(($(stat -c %s "$img") - tail_start)) >"$TMP/$n.tail0"
	else
		part "$n" rootfsA
		region_sha "$img" 0 "$pstart" >"$TMP/$n.head0"
		for role in rootfsA rootfsB; do
			part "$n" "$role"
			region_sha "$img" "$pstart" "$psize" >"$TMP/$n.$role.sha0"
			[ "$pfstype" = ext4 ] || continue
			region "$img" "$pstart" "$psize" "$TMP/$n.$role.fs0"
			dfs "$TMP/$n.$role.fs0" "cat /etc/mender/mender.conf" >"$TMP/$n.$role.conf0"
			[ -s "$TMP/$n.$role.conf0" ] || rm -f "$TMP/$n.$role.conf0"
			rm -f "$TMP/$n.$role.fs0"
		done
	fi
	rm -f "$TMP/$n.data0.fs"
	[ -s "$TMP/$n.data.conf0" ]
	verdict "$n: the fresh image has a data mender.conf (debugfs)"

	for round in 1 2; do
		run_ok "$PS" provision --target "$img" --serial "$serial" --config "$TMP/$n.conf" \
			--ca-dir "$CA" --db "$DB"
		st=$?
		cp "$TMP/run.out" "$TMP/$n.prov$round.out"
		[ $st -eq 0 ]
		verdict "$n: provision --serial $serial (round $round, key $kt, conf_target $target)"
		check_image "$n" "$serial" "$kt" "$target" "$scert" "$round"
	done
	[ "$(cat "$TMP/$n.r1/serial")" != "$(cat "$TMP/$n.r2/serial")" ]
	verdict "$n: re-provisioning replaced the certificate (new serial in the image)"
	! cmp -s "$TMP/$n.r1/key.pem" "$TMP/$n.r2/key.pem"
	verdict "$n: re-provisioning replaced the key"
	rm -rf "$TMP/$n.r1"/*.fs "$TMP/$n.r2"/*.fs
}

SIZE=64
layout mbr-boot-empty default data yes --table mbr --boot yes --rootfs-b empty --size $SIZE
layout gpt-noboot-full ed25519 data no --table gpt --boot no --rootfs-b full --size $SIZE
layout mbr-unformatted-b p384 data no --table mbr --boot yes --rootfs-b none --size $SIZE
layout mbr-swap-6parts rsa3072 data no --table mbr --boot yes --extra swap --size $SIZE
# a data mender.conf with more keys, one section spelt in lower case (the client matches names
# case-insensitively: the station must merge into it, not add a second "HttpsClient")
cat >"$TMP/rich-data.conf" <<'EOF'
{
    "RootfsPartA": "/dev/mmcblk0p2",
    "RootfsPartB": "/dev/mmcblk0p3",
    "httpsclient": {"SkipVerify": false},
    "Security": {"AuthPrivateKey": "/var/lib/mender/mender-agent.pem"},
    "DeviceTypeFile": "/data/mender/device_type",
    "InventoryPollIntervalSeconds": 28800,
    "Connectivity": {"DisableKeepAlive": true, "IdleConnTimeoutSeconds": 30}
}
EOF
layout gpt-ext4-5parts p256 data no --table gpt --boot yes --extra ext4 --rootfs-b full --size 96 \
	--data-conf "$TMP/rich-data.conf"
layout rootfs-target-full default rootfs yes --table mbr --boot yes --rootfs-b full --size $SIZE
layout rootfs-target-empty p256 rootfs no --table gpt --boot yes --rootfs-b empty --size $SIZE

# The five- and six-partition layouts really put data after the extra partition.
part mbr-swap-6parts data
n6=$pnum
part gpt-ext4-5parts data
[ "$n6" = 6 ] && [ "$pnum" = 5 ]
verdict "the extra-partition layouts have data as p6 (MBR, logical) and p5 (GPT), not p4"

# The partition table as sfdisk reads it agrees with the builder's offsets (the offsets every
# check above relied on).
sfdisk -J "$TMP/mbr-swap-6parts.img" >"$TMP/sfdisk.json" 2>>"$TMP/why" &&
	python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["partitiontable"]
got = {p["node"][len(sys.argv[2]):]: p["start"] * 512 for p in t["partitions"]}
for line in open(sys.argv[3]):
    num, start = line.split()[:2]
    if got.get(num.lstrip("p")) != int(start):
        sys.exit("p%s: sfdisk says %s, mkmenderimg %s" % (num, got.get(num), start))
' "$TMP/sfdisk.json" "$TMP/mbr-swap-6parts.img" "$TMP/mbr-swap-6parts.parts" >>"$TMP/why" 2>&1
verdict "sfdisk -J agrees with mkmenderimg.sh's partition offsets (6-partition MBR)"

# ---------------------------------------------------------------------------------------------
# a 16 GiB sparse image: only metadata is touched, the 2 GiB data partition checks clean
# ---------------------------------------------------------------------------------------------
n=big
img=$TMP/big.img
bash "$MKIMG" --size 16384 "$img" >"$TMP/big.parts" 2>"$TMP/why"
if verdict "big: mkmenderimg.sh --size 16384 builds a sparse 16 GiB image"; then
	write_config big default data no
	part big data
	dnum=$pnum dstart=$pstart dsize=$psize
	run_ok "$PS" provision --target "$img" --serial SN-big-0001 --config "$TMP/big.conf" \
		--ca-dir "$CA" --db "$DB"
	verdict "big: provision the 16 GiB image"
	[ "$(stat -c %s "$img")" -eq $((16384 * MiB)) ]
	verdict "big: the image is still 16 GiB long"
	[ "$(du -k "$img" | cut -f1)" -lt 65536 ]
	verdict "big: the image is still sparse ($(du -k "$img" | cut -f1) KiB allocated)"
	# dd reads the 2 GiB partition's holes quickly; conv=sparse keeps the copy small
	region "$img" "$dstart" "$dsize" "$TMP/big.data.fs"
	e2fsck -fn "$TMP/big.data.fs" >"$TMP/why" 2>&1
	verdict "big: e2fsck -fn is clean on the $((dsize / MiB)) MiB data partition p$dnum"
	inode_is "$TMP/big.data.fs" /mender/mender-cert-private.pem 0600 0 0 &&
		inode_is "$TMP/big.data.fs" /mender/mender-cert.pem 0644 0 0
	verdict "big: key 0600 and certificate 0644, root:root"
	dfs "$TMP/big.data.fs" "cat /mender/mender-cert-private.pem" >"$TMP/big.key"
	dfs "$TMP/big.data.fs" "cat /mender/mender-cert.pem" >"$TMP/big.cert"
	key_matches "$TMP/big.key" "$TMP/big.cert" &&
		openssl verify -purpose sslclient -CAfile "$CA/ca-cert.pem" "$TMP/big.cert" >/dev/null
	verdict "big: the key matches the certificate, which verifies against the CA"
	run_ok "$PS" verify --target "$img" --config "$TMP/big.conf" --ca-dir "$CA"
	verdict "big: provstation verify exits 0"
	rm -f "$TMP/big.data.fs" "$img"
fi

# ---------------------------------------------------------------------------------------------
# the audit as a whole: every provisioning above is one row, verified or (the first round of a
# re-provisioned device) superseded, nothing else
# ---------------------------------------------------------------------------------------------
"$PS" export --format csv --db "$DB" >"$TMP/all.csv" 2>"$TMP/why"
python3 -c '
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
states = sorted(r["state"] for r in rows)
if len(rows) != int(sys.argv[2]) or states != ["superseded"] * 7 + ["verified"] * 8:
    sys.exit("%d rows in states %s" % (len(rows), states))
serials = [r["cert_serial"] for r in rows]
if len(set(serials)) != len(serials):
    sys.exit("certificate serials repeat")
' "$TMP/all.csv" 15 >>"$TMP/why" 2>&1
verdict "the export has 15 rows (7 layouts x 2 + 1): 8 verified, 7 superseded, no cert serial twice"

done_testing
