#!/bin/sh
# provision_errors.sh — `provstation provision` refuses bad input: targets that are not disk
# images or are truncated, layouts without a usable data partition, damaged or full
# filesystems, mender.conf files it cannot merge or that the client would override, a
# read-only target, bad serials and commonNames, CA keys it must not or cannot use, a missing
# target, a bad configuration. Each refusal must be: a non-zero exit, exactly one line on
# stderr naming the problem (no control characters echoed), nothing on stdout, the target
# byte-for-byte unchanged, and no audit row (all these checks run before a certificate is
# issued).
. "$SRCDIR/tests/lib.sh"
need openssl sha256sum dd python3 bash debugfs dumpe2fs sfdisk mkfs.ext4 mkfs.vfat truncate

unset PROVSTATION_CONFIG PROVSTATION_CA_PASSPHRASE
PS=$PROVSTATION
MKIMG=$SRCDIR/scripts/mkmenderimg.sh
PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C
CA=$TMP/ca
DB=$TMP/audit.db
MiB=1048576

# the reasons a composite check failed, shown under its "not ok"
: >"$TMP/why"
why() { echo "$*" >>"$TMP/why"; }
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

# rows DBFILE: the number of audit rows (JSON lines export, one row per line)
rows() { "$PS" export --format jsonl --db "$1" </dev/null | wc -l; }
failed_rows() { "$PS" export --format jsonl --db "$1" --status failed </dev/null | wc -l; }
digest() {
	if [ -d "$1" ]; then
		echo "directory $(find "$1" | wc -l)"
	elif [ -e "$1" ]; then
		sha256sum <"$1" | cut -d' ' -f1
	else
		echo absent
	fi
}

# oneline.py lines FILE: exactly one non-empty line, ending in a newline.
# oneline.py clean FILE: and no control character (C0, DEL, C1) in it: what the operator
# typed wrong must not reach the terminal raw (an ESC or CSI starts an escape sequence, CR
# hides the start of the line).
cat >"$TMP/oneline.py" <<'EOF'
import sys, unicodedata
mode, path = sys.argv[1:3]
data = open(path, "rb").read()
if not data.rstrip(b"\n"):
    sys.exit("stderr is empty")
if not data.endswith(b"\n") or data.count(b"\n") != 1:
    sys.exit("stderr has %d lines: %r" % (data.count(b"\n") + (not data.endswith(b"\n")), data))
text = data[:-1].decode("utf-8", "replace")
bad = [c for c in text if unicodedata.category(c) == "Cc"]
if mode == "clean" and bad:
    sys.exit("stderr holds raw control characters %r: %r" % (bad, data))
EOF
# clean_message DESC: the last refusal's stderr line holds no raw control character
clean_message() {
	if [ "$r_rc" -eq 0 ]; then
		why "it was not refused (see above)"
		false
	else
		python3 "$TMP/oneline.py" clean "$TMP/r.err" >>"$TMP/why" 2>&1
	fi
	verdict "$1"
}

# RUN_AS: a command prefix (run as another user); DB_CHECK: the database whose rows count
RUN_AS=
DB_CHECK=$DB

# refused DESC PATTERN TARGET ARGS...: `provision --target TARGET ARGS...` (stdin not a
# terminal) is refused: non-zero exit (no signal), one clean line on stderr matching PATTERN
# (grep -E), nothing on stdout, TARGET unchanged (or still absent), no new audit row.
refused() {
	r_desc=$1 r_pat=$2 r_target=$3
	shift 3
	r_sum=$(digest "$r_target")
	r_rows=$(rows "$DB_CHECK")
	# shellcheck disable=SC2086 # RUN_AS is a word list
	$RUN_AS "$PS" provision --target "$r_target" "$@" >"$TMP/r.out" 2>"$TMP/r.err" </dev/null
	r_rc=$?
	r_st=0
	if [ $r_rc -eq 0 ] || [ $r_rc -ge 126 ]; then
		why "exit status $r_rc, want a failure status (1..125)"
		r_st=1
	fi
	if ! python3 "$TMP/oneline.py" lines "$TMP/r.err" >>"$TMP/why" 2>&1; then
		r_st=1
	elif ! grep -q -E -e "$r_pat" "$TMP/r.err"; then
		why "stderr does not match /$r_pat/: $(cat "$TMP/r.err")"
		r_st=1
	fi
	if [ -s "$TMP/r.out" ]; then
		why "stdout: $(head -3 "$TMP/r.out")"
		r_st=1
	fi
	if [ "$(digest "$r_target")" != "$r_sum" ]; then
		why "the target changed (sha256 $r_sum -> $(digest "$r_target"))"
		r_st=1
	fi
	r_after=$(rows "$DB_CHECK")
	if [ "$r_after" != "$r_rows" ]; then
		why "audit rows: $r_rows before, $r_after after"
		r_st=1
	fi
	[ $r_st -eq 0 ]
	verdict "$r_desc"
}

# mkimg NAME MKMENDERIMG-OPTIONS...: $TMP/NAME.img, its partitions in $TMP/NAME.parts
mkimg() {
	m_n=$1
	shift
	bash "$MKIMG" --size 64 "$@" "$TMP/$m_n.img" >"$TMP/$m_n.parts" 2>"$TMP/why"
	verdict "build $m_n: mkmenderimg.sh --size 64 $*"
}
# data_offset NAME / data_size NAME: of the data partition, from the builder's output
data_offset() { awk '$6 == "data" { print $2 }' "$TMP/$1.parts"; }
data_size() { awk '$6 == "data" { print $3 }' "$TMP/$1.parts"; }

# ---------------------------------------------------------------------------------------------
# a working setup first: every refusal below differs from it in one thing only
# ---------------------------------------------------------------------------------------------
ok "ca init" "$PS" ca init --dir "$CA"
write_conf() { # write_conf FILE [EXTRA LINES]: the station configuration, plus extra lines
	w_f=$1
	shift
	{
		printf '[station]\nid = test-station\ndatabase = %s\n' "$DB"
		printf '[ca]\ndir = %s\n' "$CA"
		printf '[device]\ncommon_name = {serial}.devices.example.com\n'
		printf 'subject = /O=Example Devices/C=NO\n'
		for l in "$@"; do printf '%s\n' "$l"; done
	} >"$w_f"
}
CONF=$TMP/station.conf
write_conf "$CONF"
mkimg good
mkimg control
ok "control: the same setup provisions a good image" \
	"$PS" provision --target "$TMP/control.img" --serial SN-CONTROL --config "$CONF"
[ "$(rows "$DB")" -eq 1 ]
verdict "control: one audit row"
GOOD=$TMP/good.img

# ---------------------------------------------------------------------------------------------
# not a disk image
# ---------------------------------------------------------------------------------------------
head -c $((4 * MiB)) /dev/urandom >"$TMP/random.img"
refused "random bytes: not a disk image" 'random\.img.*not a disk image' \
	"$TMP/random.img" --serial SN-1 --config "$CONF"

truncate -s $((32 * MiB)) "$TMP/bare.img"
mkfs.ext4 -q -F -L data "$TMP/bare.img" >"$TMP/why" 2>&1
verdict "build a bare ext4 filesystem (label data) without a partition table"
refused "a bare ext4 filesystem: not a disk image (no partition table)" \
	'bare\.img.*(not a disk image|partition table)' "$TMP/bare.img" --serial SN-1 --config "$CONF"

head -c 1000 /dev/zero >"$TMP/tiny.img"
refused "a 1000-byte file: not a disk image" 'tiny\.img.*not a disk image' \
	"$TMP/tiny.img" --serial SN-1 --config "$CONF"

mkdir "$TMP/dir.img"
refused "a directory as target" 'dir\.img' "$TMP/dir.img" --serial SN-1 --config "$CONF"

mkimg trunc
truncate -s $((32 * MiB)) "$TMP/trunc.img"
refused "an image truncated to half its size" 'trunc\.img.*truncated' \
	"$TMP/trunc.img" --serial SN-1 --config "$CONF"

refused "a missing target file" 'missing\.img.*(No such file|does not exist|not found)' \
	"$TMP/missing.img" --serial SN-1 --config "$CONF"
[ ! -e "$TMP/missing.img" ]
verdict "the missing target was not created"

# ---------------------------------------------------------------------------------------------
# no usable data partition
# ---------------------------------------------------------------------------------------------
# vfat boot partition + one unformatted partition, built by hand
truncate -s $((64 * MiB)) "$TMP/nodata.img"
printf 'label: dos\nunit: sectors\nstart=2048, size=16384, type=c\nstart=18432, type=83\n' |
	sfdisk -q --no-reread --no-tell-kernel "$TMP/nodata.img" >"$TMP/why" 2>&1 &&
	mkfs.vfat -F 12 -g 64/32 --mbr=n -n BOOT --offset=2048 -h 2048 "$TMP/nodata.img" 8192 \
		>>"$TMP/why" 2>&1
verdict "build an image with only a vfat and an unformatted partition"
refused "no data partition (vfat + unformatted)" 'no data partition' \
	"$TMP/nodata.img" --serial SN-1 --config "$CONF"

write_conf "$TMP/dp1.conf" '[mender]' 'data_partition = 1'
refused "[mender] data_partition = 1 names the vfat boot partition" \
	'data partition p1.*vfat.*not ext' "$GOOD" --serial SN-1 --config "$TMP/dp1.conf"

write_conf "$TMP/dp9.conf" '[mender]' 'data_partition = 9'
refused "[mender] data_partition = 9 does not exist" 'partition 9' \
	"$GOOD" --serial SN-1 --config "$TMP/dp9.conf"

# ---------------------------------------------------------------------------------------------
# damaged or full data filesystems
# ---------------------------------------------------------------------------------------------
for state in 3 2; do
	mkimg "errors$state"
	off=$(data_offset "errors$state")
	debugfs -w -R "ssv state $state" "$TMP/errors$state.img?offset=$off" >"$TMP/why" 2>&1 &&
		dumpe2fs -h "$TMP/errors$state.img?offset=$off" 2>/dev/null |
		grep -q '^Filesystem state:.*with errors'
	verdict "errors$state: debugfs ssv state $state sets EXT2_ERROR_FS on the data partition"
	refused "ext4 data partition with errors (s_state $state)" 'p4.*errors' \
		"$TMP/errors$state.img" --serial SN-1 --config "$CONF"
done

mkimg dirty
off=$(data_offset dirty)
debugfs -w -R "ssv state 0" "$TMP/dirty.img?offset=$off" >"$TMP/why" 2>&1
verdict "dirty: debugfs ssv state 0 (not cleanly unmounted)"
refused "ext4 data partition not cleanly unmounted" 'p4.*(not clean|e2fsck)' \
	"$TMP/dirty.img" --serial SN-1 --config "$CONF"

# fill the data partition with one file until a dozen blocks are left
mkimg full
off=$(data_offset full)
dumpe2fs -h "$TMP/full.img?offset=$off" >"$TMP/full.sb" 2>/dev/null
free=$(sed -n 's/^Free blocks: *//p' "$TMP/full.sb")
bsize=$(sed -n 's/^Block size: *//p' "$TMP/full.sb")
# not zeros: debugfs would write those as holes
head -c $(((free - 12) * bsize)) /dev/zero | tr '\0' x >"$TMP/filler"
debugfs -w -R "write $TMP/filler /filler" "$TMP/full.img?offset=$off" >"$TMP/why" 2>&1
rm -f "$TMP/filler"
dd if="$TMP/full.img" of="$TMP/full.fs" bs=$MiB iflag=skip_bytes,count_bytes skip="$off" \
	count="$(data_size full)" conv=sparse status=none
left=$(dumpe2fs -h "$TMP/full.fs" 2>/dev/null | sed -n 's/^Free blocks: *//p')
e2fsck -fn "$TMP/full.fs" >>"$TMP/why" 2>&1 && [ "${left:-99}" -lt 20 ]
verdict "full: a filler file leaves ${left:-?} blocks free, the filesystem is clean"
rm -f "$TMP/full.fs"
refused "a data partition too full for the files" 'p4.*(too full|no space|No free space)' \
	"$TMP/full.img" --serial SN-1 --config "$CONF"

# ---------------------------------------------------------------------------------------------
# mender.conf files that cannot be merged, or that the client would let override ours
# ---------------------------------------------------------------------------------------------
printf '{\n    "RootfsPartA": "/dev/mmcblk0p2",\n' >"$TMP/broken.json"
mkimg badjson --data-conf "$TMP/broken.json"
refused "data mender.conf that is not valid JSON" 'p4:/mender/mender\.conf.*not valid JSON' \
	"$TMP/badjson.img" --serial SN-1 --config "$CONF"

printf '["/dev/mmcblk0p2", "/dev/mmcblk0p3"]\n' >"$TMP/array.json"
mkimg array --data-conf "$TMP/array.json"
refused "data mender.conf that is a JSON array" 'p4:/mender/mender\.conf.*not a JSON object' \
	"$TMP/array.img" --serial SN-1 --config "$CONF"

printf '{"RootfsPartA": "/dev/mmcblk0p2", "RootfsPartB": "/dev/mmcblk0p3", "HttpsClient": "x"}\n' \
	>"$TMP/scalar-section.json"
mkimg scalarsection --data-conf "$TMP/scalar-section.json"
refused "data mender.conf whose HttpsClient is a string" 'HttpsClient.*not a JSON object' \
	"$TMP/scalarsection.img" --serial SN-1 --config "$CONF"

printf '{"ServerURL": "https://docker.mender.io", ' >"$TMP/main-badjson.json"
mkimg mainbadjson --main-conf "$TMP/main-badjson.json"
refused "rootfs /etc/mender/mender.conf that is not valid JSON" \
	'p2:/etc/mender/mender\.conf.*not valid JSON' "$TMP/mainbadjson.img" --serial SN-1 \
	--config "$CONF"

printf '{"ServerURL": "https://docker.mender.io",\n "HttpsClient": {"Key": "/etc/mender/other.key"}}\n' \
	>"$TMP/override-key.json"
mkimg overridekey --main-conf "$TMP/override-key.json"
refused "main mender.conf overrides HttpsClient.Key: conflict naming key and file" \
	'p2:/etc/mender/mender\.conf.*HttpsClient\.Key|HttpsClient\.Key.*p2:/etc/mender/mender\.conf' \
	"$TMP/overridekey.img" --serial SN-1 --config "$CONF"

printf '{"httpsclient": {"key": "/etc/mender/other.key"}}\n' >"$TMP/override-ci.json"
mkimg overrideci --rootfs-b full --main-conf "$TMP/override-ci.json"
refused "main mender.conf overrides httpsclient.key (the client matches names case-insensitively)" \
	'p[23]:/etc/mender/mender\.conf.*[Hh]ttps[Cc]lient\.[Kk]ey|[Hh]ttps[Cc]lient\.[Kk]ey.*p[23]:/etc/mender/mender\.conf' \
	"$TMP/overrideci.img" --serial SN-1 --config "$CONF"

printf '{"Security": {"AuthPrivateKey": "/var/lib/mender/mender-agent.pem"}}\n' >"$TMP/override-auth.json"
mkimg overrideauth --main-conf "$TMP/override-auth.json"
refused "main mender.conf overrides Security.AuthPrivateKey" \
	'p2:/etc/mender/mender\.conf.*AuthPrivateKey|AuthPrivateKey.*p2:/etc/mender/mender\.conf' \
	"$TMP/overrideauth.img" --serial SN-1 --config "$CONF"

write_conf "$TMP/url.conf" '[mender]' 'server_url = https://mender.example.com'
printf '{"Servers": [{"ServerURL": "https://other.example.com"}]}\n' >"$TMP/servers.json"
mkimg split --main-conf "$TMP/servers.json"
refused "ServerURL in the configuration, Servers in the main file: split" \
	'ServerURL.*Servers|Servers.*ServerURL' "$TMP/split.img" --serial SN-1 --config "$TMP/url.conf"

mkimg mainurl
refused "server_url differs from the main file's ServerURL (the main file wins)" \
	'p2:/etc/mender/mender\.conf.*ServerURL|ServerURL.*p2:/etc/mender/mender\.conf' \
	"$TMP/mainurl.img" --serial SN-1 --config "$TMP/url.conf"

# conf_target = rootfs: ServerURL into the main file while the data file has Servers
write_conf "$TMP/rootfs-url.conf" '[mender]' 'server_url = https://mender.example.com' \
	'conf_target = rootfs'
printf '{"RootfsPartA": "/dev/mmcblk0p2", "RootfsPartB": "/dev/mmcblk0p3",\n "Servers": [{"ServerURL": "https://other.example.com"}]}\n' \
	>"$TMP/data-servers.json"
printf '{"InventoryPollIntervalSeconds": 28800}\n' >"$TMP/main-plain.json"
mkimg rootfssplit --main-conf "$TMP/main-plain.json" --data-conf "$TMP/data-servers.json"
refused "conf_target = rootfs: ServerURL in the main file, Servers in the data file: split" \
	'ServerURL.*Servers|Servers.*ServerURL' "$TMP/rootfssplit.img" --serial SN-1 \
	--config "$TMP/rootfs-url.conf"

printf 'this is not a certificate\n' >"$TMP/not-a-cert.pem"
write_conf "$TMP/badservercert.conf" '[mender]' "server_certificate = $TMP/not-a-cert.pem"
refused "[mender] server_certificate is not a PEM certificate" 'server_certificate.*not-a-cert\.pem' \
	"$GOOD" --serial SN-1 --config "$TMP/badservercert.conf"
write_conf "$TMP/noservercert.conf" '[mender]' "server_certificate = $TMP/no-such-cert.pem"
refused "[mender] server_certificate does not exist" 'no-such-cert\.pem' \
	"$GOOD" --serial SN-1 --config "$TMP/noservercert.conf"

write_conf "$TMP/rootfs.conf" '[mender]' 'conf_target = rootfs'
mkimg nomainconf --no-main-conf
refused "conf_target = rootfs, but no root filesystem has /etc/mender/mender.conf" \
	'/etc/mender/mender\.conf' "$TMP/nomainconf.img" --serial SN-1 --config "$TMP/rootfs.conf"

# ---------------------------------------------------------------------------------------------
# a read-only target
# ---------------------------------------------------------------------------------------------
RO=$TMP/ro
mkdir "$RO"
cp "$GOOD" "$RO/target.img"
chmod 0444 "$RO/target.img"
if [ "$(id -u)" -ne 0 ]; then
	# not root: the mode alone makes it read-only
	refused "a read-only target (mode 0444)" 'target\.img.*read-only' "$RO/target.img" \
		--serial SN-1 --config "$CONF"
else
	# root writes through mode 0444: run provstation as nobody, with a CA and a database
	# nobody may use, and the image mode 0444
	ro_user=
	if id nobody >/dev/null 2>&1; then
		ro_gid=$(id -g nobody)
		chmod 0711 "$TMP"
		chmod 0755 "$RO"
		if setpriv --reuid=nobody --regid="$ro_gid" --clear-groups true 2>/dev/null; then
			ro_user="setpriv --reuid=nobody --regid=$ro_gid --clear-groups"
		elif su nobody -s /bin/sh -c true 2>/dev/null; then
			ro_user=su
		fi
	fi
	if [ -z "$ro_user" ]; then
		tap_n=$((tap_n + 1))
		echo "ok $tap_n - a read-only target # SKIP running as root, and neither setpriv nor su can switch to nobody"
	else
		cp -r "$CA" "$RO/ca"
		mkdir "$RO/db"
		chown -R nobody "$RO/ca" "$RO/db"
		{
			printf '[station]\nid = ro-station\ndatabase = %s\n' "$RO/db/audit.db"
			printf '[ca]\ndir = %s\n' "$RO/ca"
		} >"$RO/station.conf"
		chmod 0644 "$RO/station.conf"
		DB_CHECK=$RO/db/audit.db
		if [ "$ro_user" = su ]; then
			# su passes the arguments after the user to the shell: $0, $1, ...
			printf '#!/bin/sh\nexec su -s /bin/sh -c %s -- nobody "$@"\n' \
				"'exec \"\$0\" \"\$@\"'" >"$RO/as-nobody"
			chmod 0755 "$RO/as-nobody"
			RUN_AS=$RO/as-nobody
		else
			RUN_AS=$ro_user
		fi
		# the same command with a writable copy works: only the mode makes the difference
		cp "$GOOD" "$RO/writable.img"
		chown nobody "$RO/writable.img"
		$RUN_AS "$PS" provision --target "$RO/writable.img" --serial SN-RO-CONTROL \
			--config "$RO/station.conf" </dev/null >"$TMP/why" 2>&1
		verdict "read-only control: nobody provisions a writable copy with this CA and database"
		refused "a read-only target (mode 0444, provstation run as nobody)" \
			'target\.img.*read-only' "$RO/target.img" --serial SN-1 --config "$RO/station.conf"
		RUN_AS=
		DB_CHECK=$DB
	fi
fi

# ---------------------------------------------------------------------------------------------
# serials and commonNames
# ---------------------------------------------------------------------------------------------
refused "an empty serial" 'serial.*empty' "$GOOD" --serial '' --config "$CONF"
s64=$(printf '%064d' 0 | tr 0 A)
refused "a 65-byte serial" 'serial.*(65|64|long)' "$GOOD" --serial "${s64}B" --config "$CONF"
for c in 001:SOH 011:TAB 012:LF 015:CR 033:ESC 177:DEL; do
	o=${c%%:*} name=${c#*:}
	# shellcheck disable=SC2059 # the format builds the byte
	refused "a serial with a control character ($name)" 'serial.*control character' \
		"$GOOD" --serial "$(printf "SN\\${o}X")" --config "$CONF"
	# a tab shown raw is only whitespace; the others move the cursor, start escape
	# sequences or vanish
	[ "$name" = TAB ] ||
		clean_message "a serial with a control character ($name): the message does not echo it raw"
done
# C1 control characters (U+0080..U+009F) are control characters too; U+009B is CSI, which a
# terminal may take as the start of an escape sequence
for c in 302205:U+0085 302233:U+009B; do
	o=${c%%:*} name=${c#*:}
	b1=$(echo "$o" | cut -c1-3) b2=$(echo "$o" | cut -c4-6)
	# shellcheck disable=SC2059 # the format builds the bytes
	refused "a serial with a C1 control character ($name)" 'serial.*control character' \
		"$GOOD" --serial "$(printf "SN\\${b1}\\${b2}X")" --config "$CONF"
	clean_message "a serial with a C1 control character ($name): the message does not echo it raw"
done
refused "a serial that is not UTF-8" 'serial.*UTF-8' "$GOOD" --serial "$(printf 'SN\377X')" \
	--config "$CONF"

write_conf "$TMP/cn3.conf"
sed -i 's/^common_name = .*/common_name = {serial}{serial}{serial}/' "$TMP/cn3.conf"
refused "a commonName template that yields more than 64 bytes" \
	'(template|commonName|common_name).*64' "$GOOD" --serial 123456789012345678901234567890 \
	--config "$TMP/cn3.conf"

# ---------------------------------------------------------------------------------------------
# the CA key
# ---------------------------------------------------------------------------------------------
cp -r "$CA" "$TMP/ca-0644"
chmod 0644 "$TMP/ca-0644/ca-private.key"
refused "a CA key readable by others (mode 0644)" 'ca-private\.key.*(readable|0644)' \
	"$GOOD" --serial SN-1 --config "$CONF" --ca-dir "$TMP/ca-0644"

echo 'the right passphrase' >"$TMP/pass"
echo 'the wrong passphrase' >"$TMP/wrong-pass"
ok "ca init --passphrase-file (an encrypted CA)" \
	"$PS" ca init --dir "$TMP/ca-enc" --passphrase-file "$TMP/pass"
refused "an encrypted CA key with the wrong passphrase (--passphrase-file)" \
	'(wrong|bad|incorrect) passphrase' "$GOOD" --serial SN-1 --config "$CONF" \
	--ca-dir "$TMP/ca-enc" --passphrase-file "$TMP/wrong-pass"
PROVSTATION_CA_PASSPHRASE='the wrong passphrase'
export PROVSTATION_CA_PASSPHRASE
refused "an encrypted CA key with the wrong passphrase (PROVSTATION_CA_PASSPHRASE)" \
	'(wrong|bad|incorrect) passphrase' "$GOOD" --serial SN-1 --config "$CONF" \
	--ca-dir "$TMP/ca-enc"
unset PROVSTATION_CA_PASSPHRASE
refused "an encrypted CA key and no passphrase (stdin is not a terminal)" \
	'ca-private\.key.*(encrypted|passphrase)' "$GOOD" --serial SN-1 --config "$CONF" \
	--ca-dir "$TMP/ca-enc"
refused "a CA directory that does not exist" 'no-such-ca' "$GOOD" --serial SN-1 \
	--config "$CONF" --ca-dir "$TMP/no-such-ca"

# ---------------------------------------------------------------------------------------------
# the configuration
# ---------------------------------------------------------------------------------------------
write_conf "$TMP/unknown.conf" 'colour = blue'
refused "an unknown configuration key: the error names file, line and key" \
	'unknown\.conf:9:.*colou?r' "$GOOD" --serial SN-1 --config "$TMP/unknown.conf"
write_conf "$TMP/keytype.conf" 'key_type = dsa1024'
refused "a bad key_type: the error names file, line and key" \
	'keytype\.conf:9:.*key_type' "$GOOD" --serial SN-1 --config "$TMP/keytype.conf"
write_conf "$TMP/section.conf" '[printer]' 'paper = a4'
refused "an unknown section: the error names file, line and section" \
	'section\.conf:9:.*printer' "$GOOD" --serial SN-1 --config "$TMP/section.conf"
refused "a configuration file that does not exist" 'no-such\.conf' "$GOOD" --serial SN-1 \
	--config "$TMP/no-such.conf"

# ---------------------------------------------------------------------------------------------
# after all of it: the good image was never touched, and still provisions
# ---------------------------------------------------------------------------------------------
[ "$(failed_rows "$DB")" -eq 0 ]
verdict "no audit row in state failed: every refusal came before a certificate was issued"
ok "the good image still provisions after all the refusals" \
	"$PS" provision --target "$GOOD" --serial SN-GOOD --config "$CONF"

done_testing
