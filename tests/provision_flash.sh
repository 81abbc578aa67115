#!/bin/sh
# provision_flash.sh — `provstation provision --flash`: the golden image (mkmenderimg.sh plus
# 8 MiB of random data in rootfs A), raw and compressed with gzip, xz and zstd, with and
# without a bmap, flashed and personalized in one job onto regular files (new, and one holding
# other data) and loop devices: everything before the data partition equals the image,
# `provstation verify` passes, and the audit row records the image's file name and the
# SHA-256 of the decompressed image. A failed flash (corrupt or truncated stream, image that
# does not match its bmap, image larger than the disk, unlisted disk) exits 1 with one line
# on stderr naming the target and the reason, and issues nothing (no audit row); a refused
# serial flashes nothing. On a terminal the progress line shows and is cleared.
. "$SRCDIR/tests/lib.sh"
need sfdisk mkfs.ext4 debugfs cmp gzip xz zstd bmaptool python3 sha256sum
PATH=$PATH:/usr/sbin:/sbin

cat >"$TMP/station.conf" <<CONF
[station]
database = $TMP/audit.db
[ca]
dir = $TMP/ca
CONF
PS() { "$PROVSTATION" "$@"; }
PS ca init --dir "$TMP/ca" >/dev/null || skip_all "provstation ca init failed"

# The golden image: 96 MiB, sparse, with 8 MiB of random data in a file of rootfs A.
. "$SRCDIR/tests/golden.sh"
golden_image g 96 8
# same_as_image TARGET [--bmap]: the target equals the image before the data partition (with
# a bmap: in the mapped ranges; the rest of a disk keeps what was there)
same_as_image() {
	case " $* " in
	*" --bmap "*)
		while read -r off len; do
			[ "$off" -ge "$data_off" ] && continue
			[ $((off + len)) -gt "$data_off" ] && len=$((data_off - off))
			cmp -s -n "$len" -i "$off:$off" "$TMP/g.img" "$1" || return 1
		done <"$TMP/ranges"
		;;
	*) cmp -s -n "$data_off" "$TMP/g.img" "$1" ;;
	esac
}

# field SERIAL NAME: one column of the newest audit row of SERIAL ("" when there is none)
field() {
	PS export --format jsonl --config "$TMP/station.conf" --serial "$1" | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
print(rows[-1][sys.argv[1]] if rows else "")' "$2"
}
# rows: how many audit rows there are
rows() { PS export --format jsonl --config "$TMP/station.conf" | grep -c .; }

n=0
# flashed_ok DESC TARGET IMAGE [provision options...]: provision --flash, then check the
# target, verify and the audit row
flashed_ok() {
	desc=$1 target=$2 image=$3
	shift 3
	n=$((n + 1))
	serial=FL-$n
	why=
	if ! PS provision --config "$TMP/station.conf" --flash "$image" --target "$target" \
		--serial "$serial" "$@" >"$TMP/out" 2>"$TMP/err"; then
		why="provision --flash failed: $(tail -1 "$TMP/err")"
	fi
	[ -z "$why" ] && ! grep -q -E \
		"^  image        ${image##*/} \(.*, $size bytes, sha256 $img_sha(, from the hash cache)?\)" \
		"$TMP/out" && why="no image line"
	[ -z "$why" ] && ! same_as_image "$target" "$@" &&
		why="the target differs from the image before the data partition"
	[ -z "$why" ] && ! PS verify --config "$TMP/station.conf" --target "$target" \
		>"$TMP/verify" 2>&1 && why="verify failed: $(tail -1 "$TMP/verify")"
	if [ -z "$why" ]; then
		got_state=$(field "$serial" state)
		got_name=$(field "$serial" image_name)
		got_sha=$(field "$serial" image_sha256)
		[ "$got_state" = verified ] || why="audit state '$got_state'"
		[ "$got_name" = "${image##*/}" ] || why="${why:+$why, }audit image_name '$got_name'"
		[ "$got_sha" = "$img_sha" ] || why="${why:+$why, }audit image_sha256 '$got_sha'"
	fi
	tap_n=$((tap_n + 1))
	if [ -z "$why" ]; then
		echo "ok $tap_n - $desc"
	else
		echo "not ok $tap_n - $desc: $why"
		sed 's/^/#   /' "$TMP/out" "$TMP/err"
		tap_failed=$((tap_failed + 1))
	fi
}

# flash_fails DESC PATTERN TARGET IMAGE [provision options...]: exit 1, one line on stderr
# naming the target and PATTERN, and no audit row at all
flash_fails() {
	desc=$1 pattern=$2 target=$3 image=$4
	shift 4
	n=$((n + 1))
	before=$(rows)
	PS provision --config "$TMP/station.conf" --flash "$image" --target "$target" \
		--serial "FL-$n" "$@" >"$TMP/out" 2>"$TMP/err"
	st=$?
	why=
	[ $st -eq 1 ] || why="exit $st"
	[ "$(wc -l <"$TMP/err")" -eq 1 ] || why="${why:+$why, }$(wc -l <"$TMP/err") lines on stderr"
	grep -q "^provstation: cannot flash ${image##*/} onto $target: .*$pattern" "$TMP/err" ||
		why="${why:+$why, }the error does not name the target and '$pattern'"
	[ "$(rows)" -eq "$before" ] || why="${why:+$why, }an audit row was added"
	[ -z "$(field "FL-$n" cert_serial)" ] || why="${why:+$why, }a certificate was issued"
	[ -z "$why" ]
	check "$desc"
	[ -z "$why" ] || { echo "#   $why"; sed 's/^/#   /' "$TMP/out" "$TMP/err"; }
}

# ---- regular files: every format, with and without the bmap
for ext in "" .gz .xz .zst; do
	name=${ext:-raw}
	name=${name#.}
	flashed_ok "$name image with bmap onto a new file" "$TMP/t-$name-bmap.img" \
		"$TMP/g.img$ext" --bmap "$TMP/g.bmap"
	flashed_ok "$name image without bmap onto a new file" "$TMP/t-$name.img" "$TMP/g.img$ext"
done
[ -f "$TMP/image-sha256.cache" ] && [ "$(stat -c '%a %u' "$TMP/image-sha256.cache")" = "600 $(id -u)" ]
check "the image hash cache is kept beside the audit database, mode 0600"
grep -q "sha256 $img_sha, from the hash cache)" "$TMP/out"
check "an image flashed before: its SHA-256 comes from the hash cache"
head -c $((size + 1048576)) /dev/zero | tr '\0' '\252' >"$TMP/used.img"
flashed_ok "a file holding other data is replaced by the image, then personalized" \
	"$TMP/used.img" "$TMP/g.img.xz" --bmap "$TMP/g.bmap"
[ "$(stat -c %s "$TMP/used.img")" -eq "$size" ]
check "the replaced file has the image's size"
flashed_ok "--no-verify-flash skips the read-back, personalization is still verified" \
	"$TMP/nv.img" "$TMP/g.img.zst" --no-verify-flash
grep -q "^  flashed      [0-9]* bytes, .* MB/s; verified no" "$TMP/out"
check "and says the flash was not read back"

# Field service: the same device flashed and personalized again; its first row is superseded.
first_cert=$(field FL-2 cert_serial)
PS provision --config "$TMP/station.conf" --flash "$TMP/g.img" --bmap "$TMP/g.bmap" \
	--target "$TMP/t-raw.img" --serial FL-2 >"$TMP/out" 2>&1 &&
	PS verify --config "$TMP/station.conf" --target "$TMP/t-raw.img" >/dev/null &&
	[ "$(field FL-2 state)" = verified ] && [ "$(field FL-2 image_sha256)" = "$img_sha" ] &&
	[ "$(field FL-2 cert_serial)" != "$first_cert" ] &&
	PS export --format jsonl --config "$TMP/station.conf" --serial FL-2 --status superseded |
	grep -q "\"$first_cert\""
check "the same serial flashed again: new certificate verified, the first one superseded"

# ---- failures: nothing issued, one line naming the target and the reason
cp "$TMP/g.img.xz" "$TMP/bad.xz"
printf '\377\377\377\377\377\377\377\377' |
	dd of="$TMP/bad.xz" bs=1 seek=$(($(stat -c %s "$TMP/bad.xz") / 2)) conv=notrunc status=none
flash_fails "a corrupt xz stream issues nothing" "is corrupt: xz data" "$TMP/e1.img" "$TMP/bad.xz"
head -c $(($(stat -c %s "$TMP/g.img.zst") * 2 / 3)) "$TMP/g.img.zst" >"$TMP/short.zst"
flash_fails "a truncated zstd image issues nothing" "is truncated" "$TMP/e2.img" \
	"$TMP/short.zst" --bmap "$TMP/g.bmap"
# One byte changed in the middle of the largest mapped range (the random payload).
big=$(sort -k2 -n -r "$TMP/ranges" | head -1)
cp "$TMP/g.img" "$TMP/changed.img"
printf 'X' | dd of="$TMP/changed.img" bs=1 seek=$((${big% *} + ${big#* } / 2)) conv=notrunc \
	status=none
flash_fails "an image that does not match its bmap issues nothing" "checksum mismatch" \
	"$TMP/e3.img" "$TMP/changed.img" --bmap "$TMP/g.bmap"
flash_fails "a missing image issues nothing" "No such file" "$TMP/e4.img" "$TMP/nothing.img"

# A refused serial: nothing is flashed.
PS provision --config "$TMP/station.conf" --flash "$TMP/g.img" --target "$TMP/e5.img" \
	--serial "$(printf 'BAD\001')" >/dev/null 2>"$TMP/err"
[ $? -eq 1 ] && [ ! -e "$TMP/e5.img" ] && [ "$(wc -l <"$TMP/err")" -eq 1 ]
check "a refused serial flashes nothing"
PS provision --config "$TMP/station.conf" --bmap "$TMP/g.bmap" --target "$TMP/e6.img" \
	--serial X >/dev/null 2>"$TMP/err"
[ $? -eq 2 ] && grep -q "need --flash IMG" "$TMP/err"
check "--bmap without --flash: usage error, exit 2"

# ---- on a terminal: the progress line shows, and is cleared before the result
if command -v script >/dev/null; then
	script -qec "'$PROVSTATION' provision --config '$TMP/station.conf' --flash '$TMP/g.img' \
		--target '$TMP/tty.img' --serial FL-TTY" /dev/null >"$TMP/tty" 2>&1
	python3 - "$TMP/tty" <<'PY'
import sys
out = open(sys.argv[1], "rb").read()
line = out.find(b"\rtty.img writing ")
result = out.find(b"provisioned FL-TTY on")
# the line shows, and is cleared (carriage return, erase to the end) before the result
sys.exit(0 if 0 <= line < result and out[:result].endswith(b"\r\x1b[K") else 1)
PY
	check "on a terminal the flashing progress line shows and is cleared"
else
	echo "ok $((tap_n = tap_n + 1)) - # SKIP the progress line: script(1) is not installed"
fi

# ---- loop devices
loop_reason=$(loop_unavailable)
loop_setup
if [ -z "$loop_reason" ]; then
	head -c "$size" /dev/zero | tr '\0' '\252' >"$TMP/disk"
	LOOP=$(loop_attach "$TMP/disk") || loop_reason="losetup: $(head -1 "$TMP/losetup.err")"
fi
if [ -z "$loop_reason" ]; then
	flash_fails "an unlisted disk is refused and nothing is issued" \
		"not a configured station slot" "$LOOP" "$TMP/g.img" --bmap "$TMP/g.bmap" \
		--allow-fixed-disk
	[ "$(od -An -tx1 -N16 "$LOOP" | tr -d ' \n')" = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ]
	check "the unlisted disk was not written"
	flashed_ok "raw image with bmap onto a loop device" "$LOOP" "$TMP/g.img" \
		--bmap "$TMP/g.bmap" --allow-unlisted --allow-fixed-disk
	flashed_ok "xz image without bmap onto a loop device" "$LOOP" "$TMP/g.img.xz" \
		--allow-unlisted --allow-fixed-disk
	flashed_ok "zstd image with bmap onto a loop device" "$LOOP" "$TMP/g.img.zst" \
		--bmap "$TMP/g.bmap" --allow-unlisted --allow-fixed-disk
	truncate -s 32M "$TMP/small"
	SMALL=$(loop_attach "$TMP/small")
	flash_fails "an image larger than the disk is refused and nothing is issued" \
		"less than the $size needed" "$SMALL" "$TMP/g.img" --allow-unlisted \
		--allow-fixed-disk
	[ "$(od -An -tx1 -N16 "$SMALL" | tr -d ' \n')" = 00000000000000000000000000000000 ]
	check "the small disk was not written"
	flash_fails "a gzip image of unknown size stops at the disk's end and issues nothing" \
		"larger than the target" "$SMALL" "$TMP/g.img.gz" --allow-unlisted \
		--allow-fixed-disk
else
	echo "ok $((tap_n = tap_n + 1)) - # SKIP loop device targets: $loop_reason"
fi
done_testing
