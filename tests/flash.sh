#!/bin/sh
# flash.sh — `provstation flash`: a sparse Mender image (mkmenderimg.sh plus a 16 MiB file of
# random data in rootfs A), raw and compressed with gzip, xz and zstd, with and without a bmap
# from bmaptool, onto a regular file and onto a loop device: the target equals the image (cmp;
# with a bmap on a loop device only the mapped ranges, as python's XML parser reads them from
# the bmap, and an unmapped block keeps what was there) and provisioning then passes. A corrupt
# stream, a truncated image, a damaged bmap, an image that does not match its bmap and an image
# larger than its target each fail with one line on stderr. Fan-out to three files, one on an
# 8 MiB tmpfs: two finish and verify, the third fails with ENOSPC. The cache of whole-image
# SHA-256s: used while the image file is unchanged, refreshed when it is touched or rewritten in
# place with the same size (even with its old mtime put back), and ignored when it cannot be
# believed (group- or world-writable, another owner, a symbolic link, a foreign header, lines
# that do not parse, an entry whose size disagrees with the image); an image changed too
# recently for its times to tell a later change is hashed but not recorded. (The short sleeps
# put a changed image's ctime past that 50 ms granularity margin.)
. "$SRCDIR/tests/lib.sh"
need sfdisk mkfs.ext4 debugfs cmp gzip xz zstd bmaptool python3 sha256sum

cat >"$TMP/station.conf" <<CONF
[station]
database = $TMP/audit.db
[ca]
dir = $TMP/ca
CONF
"$PROVSTATION" ca init --dir "$TMP/ca" >/dev/null || skip_all "provstation ca init failed"

# The image: 256 MiB, sparse, with 16 MiB of random data in a file of rootfs A.
. "$SRCDIR/tests/golden.sh"
golden_image m 256 16
mapped=$(awk '{s += $2} END {print s}' "$TMP/ranges")
# An unmapped block well inside the image (between two ranges), to show it is not written.
hole=$(awk 'NR > 1 && $1 > prev + 4096 * 4 {print prev + 4096; exit} {prev = $1 + $2}' \
	"$TMP/ranges")

ranges_equal() { # ranges_equal TARGET: every mapped range of the target equals the image
	while read -r off len; do
		cmp -s -n "$len" -i "$off:$off" "$TMP/m.img" "$1" || {
			echo "range at $off ($len bytes) differs"
			return 1
		}
	done <"$TMP/ranges"
}

serial=0
flash_ok() { # flash_ok DESC TARGET CHECK [flash options...]: flash, compare, provision, verify
	desc=$1 target=$2 how=$3
	shift 3
	serial=$((serial + 1))
	tap_n=$((tap_n + 1))
	if ! "$PROVSTATION" flash "$@" --target "$target" >"$TMP/out" 2>"$TMP/err"; then
		echo "not ok $tap_n - $desc: flash failed"
		sed 's/^/#   /' "$TMP/out" "$TMP/err"
		tap_failed=$((tap_failed + 1))
		return
	fi
	why=
	grep -q "^$target: OK; .* bytes written, .* MB/s; verified yes" "$TMP/out" ||
		why="no OK line"
	grep -q "sha256 $img_sha" "$TMP/out" || why="${why:+$why, }image SHA-256 not reported"
	case $how in
	whole) cmp -s -n "$size" "$TMP/m.img" "$target" || why="${why:+$why, }target differs" ;;
	ranges) ranges_equal "$target" >"$TMP/cmp" || why="${why:+$why, }$(cat "$TMP/cmp")" ;;
	esac
	if [ -z "$why" ] && ! "$PROVSTATION" provision --config "$TMP/station.conf" \
		--target "$target" --serial "FLASH-$serial" --allow-unlisted --allow-fixed-disk \
		>"$TMP/prov" 2>&1; then
		why="provision failed: $(tail -1 "$TMP/prov")"
	fi
	if [ -z "$why" ] && ! "$PROVSTATION" verify --config "$TMP/station.conf" \
		--target "$target" >"$TMP/prov" 2>&1; then
		why="verify failed: $(tail -1 "$TMP/prov")"
	fi
	if [ -z "$why" ]; then
		echo "ok $tap_n - $desc"
	else
		echo "not ok $tap_n - $desc: $why"
		sed 's/^/#   /' "$TMP/out" "$TMP/err"
		tap_failed=$((tap_failed + 1))
	fi
}

fails_with() { # fails_with DESC PATTERN [flash options...]: exit 1, one stderr line naming it
	desc=$1 pattern=$2
	shift 2
	"$PROVSTATION" flash "$@" >"$TMP/out" 2>"$TMP/err"
	st=$?
	good=no
	[ $st -eq 1 ] && [ "$(wc -l <"$TMP/err")" -eq 1 ] && grep -q -- "$pattern" "$TMP/err" &&
		grep -q "FAILED: .*$pattern" "$TMP/out" && good=yes
	[ $good = yes ]
	check "$desc"
	[ $good = yes ] || { echo "#   exit $st"; sed 's/^/#   /' "$TMP/out" "$TMP/err"; }
}

# ---- regular files
for ext in "" .gz .xz .zst; do
	name=${ext:-raw}
	name=${name#.}
	rm -f "$TMP/t.img"
	flash_ok "$name image with bmap to a file" "$TMP/t.img" whole --image "$TMP/m.img$ext" \
		--bmap "$TMP/m.bmap"
	rm -f "$TMP/t.img"
	flash_ok "$name image without bmap to a file" "$TMP/t.img" whole --image "$TMP/m.img$ext"
done
# An existing, longer file is truncated first.
head -c $((size + 1048576)) /dev/zero | tr '\0' '\252' >"$TMP/t.img"
flash_ok "an existing file holding other data is replaced" "$TMP/t.img" whole \
	--image "$TMP/m.img.zst" --bmap "$TMP/m.bmap"
[ "$(stat -c %s "$TMP/t.img")" -eq "$size" ]
check "the file target has the image's size"
"$PROVSTATION" flash --image "$TMP/m.img" --bmap "$TMP/m.bmap" --target "$TMP/t.img" \
	--no-verify >"$TMP/out" 2>&1 && grep -q "OK; $mapped bytes written, .*verified no" "$TMP/out"
check "--no-verify writes the $mapped mapped bytes and does not read back"

# ---- the image hash cache
cache=$TMP/cache/provstation/image-sha256
cp --sparse=always "$TMP/m.img" "$TMP/c.img"
rm -f "$cache"
settle() { sleep 0.1; }
fake=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
flash_c() { # flash_c IMAGE: flash it without verify; prints the SHA-256 it reports
	"$PROVSTATION" flash --image "$1" --bmap "$TMP/m.bmap" --target "$TMP/ct.img" \
		--no-verify >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err" >&2; return 1; }
	sed -n 's/^image .*, sha256 \([0-9a-f]*\)\( (from the hash cache)\)\{0,1\}$/\1/p' "$TMP/out"
}
key_of() { stat -c '%d %i %s' "$1"; } # the start of the image's cache line
entry_of() { grep "^$(key_of "$1") " "$cache"; }
forge() { # forge IMAGE SHA [SIZE]: replace the image's entry's SHA-256 (and stream size)
	awk -v k="$(key_of "$1") " -v sha="$2" -v sz="${3:-}" \
		'index($0, k) == 1 { $8 = sha; if (sz != "") $7 = sz } { print }' \
		"$cache" >"$cache.new" && cat "$cache.new" >"$cache" && rm -f "$cache.new"
}
c_sha=$(sha256sum "$TMP/c.img" | cut -c1-64)
# Pinned to a second before the copy's ctime: too recent to be recorded.
PROVSTATION_NOW=$(($(stat -c %Z "$TMP/c.img") - 1)) flash_c "$TMP/c.img" >"$TMP/sha"
[ "$(cat "$TMP/sha")" = "$c_sha" ] && [ ! -e "$cache" ]
check "an image changed just before the flash is hashed, and not recorded in the cache"
settle
[ "$(flash_c "$TMP/c.img")" = "$c_sha" ] && [ -f "$cache" ] &&
	[ "$(stat -c %a "$cache")" = 600 ] && [ "$(head -1 "$cache")" = "provstation image-sha256 cache 1" ] &&
	entry_of "$TMP/c.img" | grep -Eq "^[0-9]+ [0-9]+ $size [0-9]+\.[0-9]{9} [0-9]+\.[0-9]{9} raw $size $c_sha$"
check "a first flash hashes the image and records it in a 0600 cache file, keyed by its identity"
forge "$TMP/c.img" "$fake"
[ "$(flash_c "$TMP/c.img")" = "$fake" ]
check "the next flash of the unchanged file takes the SHA-256 from the cache (a planted one shows)"
touch "$TMP/c.img"
settle
[ "$(flash_c "$TMP/c.img")" = "$c_sha" ] && [ "$(grep -c "^$(key_of "$TMP/c.img" | cut -d' ' -f1-2) " "$cache")" -eq 1 ] &&
	entry_of "$TMP/c.img" | grep -q " $c_sha$"
check "touched (new mtime and ctime): hashed again, its one entry replaced"
# Rewritten in place with the same size and its old mtime put back: only the ctime tells.
mtime=$(stat -c %y "$TMP/c.img")
printf 'rewritten' | dd of="$TMP/c.img" bs=1 seek="$hole" conv=notrunc status=none
touch -m -d "$mtime" "$TMP/c.img"
settle
new_sha=$(sha256sum "$TMP/c.img" | cut -c1-64)
[ -n "$hole" ] && [ "$(stat -c %y "$TMP/c.img")" = "$mtime" ] && [ "$new_sha" != "$c_sha" ] &&
	[ "$(flash_c "$TMP/c.img")" = "$new_sha" ] && entry_of "$TMP/c.img" | grep -q " $new_sha$"
check "rewritten in place with the same size and mtime: hashed again, the audit hash is the new one"

untrusted() { # untrusted DESC SETUP...: a planted entry in a cache that must not be believed
	desc=$1
	shift
	forge "$TMP/c.img" "$fake"
	"$@"
	got=$(flash_c "$TMP/c.img")
	[ "$got" = "$new_sha" ]
	check "$desc: ignored, the image is hashed"
	[ "$got" = "$new_sha" ] || echo "#   reported $got"
}
untrusted "a group-writable cache file" chmod 620 "$cache"
[ "$(stat -c %a "$cache")" = 600 ] && entry_of "$TMP/c.img" | grep -q " $new_sha$"
check "the untrusted cache file is replaced by a 0600 one with the right hash"
untrusted "a world-writable cache file" chmod 602 "$cache"
if [ "$(id -u)" -eq 0 ] && id nobody >/dev/null 2>&1; then
	untrusted "a cache file owned by another user" chown nobody "$cache"
else
	echo "ok $((tap_n = tap_n + 1)) - # SKIP a cache file owned by another user: needs root"
fi
plant_link() { mv "$cache" "$TMP/planted" && ln -s "$TMP/planted" "$cache"; }
untrusted "a cache file that is a symbolic link" plant_link
rm -f "$TMP/planted"
untrusted "a cache file with a foreign header" sed -i '1s/.*/provstation image-sha256 cache 2/' "$cache"
bad_line() { # bad_line SED: every entry line damaged by the sed expression
	sed -i "2,\$ $1" "$cache"
}
untrusted "a cache line with a short SHA-256" bad_line 's/.$//'
untrusted "a cache line with an extra field" bad_line 's/$/ extra/'
untrusted "a cache line with upper-case hex" bad_line "s/$fake\$/$(echo $fake | tr a-f A-F)/"
untrusted "a cache line with nanoseconds of 8 digits" bad_line 's/\.\([0-9]\{8\}\)[0-9] /.\1 /'
untrusted "a cache line with two spaces" bad_line 's/ raw / raw  /'
untrusted "a cache line with a NUL byte after it" bad_line 's/$/\x00/'
untrusted "a cache line of another format" bad_line 's/ raw / zstd /'
# A compressed image whose entry's stream size is wrong: the flash fails, the entry goes.
cp "$TMP/m.img.zst" "$TMP/c.img.zst"
settle
flash_c "$TMP/c.img.zst" >/dev/null && forge "$TMP/c.img.zst" "$fake" 12345 &&
	! flash_c "$TMP/c.img.zst" >/dev/null 2>&1 &&
	grep -q "the entry of its hash cache .* says 12345: the entry is dropped" "$TMP/err" &&
	! entry_of "$TMP/c.img.zst" >/dev/null && [ "$(flash_c "$TMP/c.img.zst")" = "$img_sha" ]
check "an entry whose size disagrees with the decompressed image fails the flash and is dropped"
"$PROVSTATION" flash --image "$TMP/c.img.zst" --bmap "$TMP/m.bmap" --target "$TMP/ct.img" \
	>"$TMP/out" 2>&1 && grep -q "sha256 $img_sha" "$TMP/out" &&
	grep -q "OK; $mapped bytes written, .*verified yes" "$TMP/out"
check "a cached compressed image flashes and verifies with the right SHA-256"
rm -f "$TMP/c.img" "$TMP/c.img.zst" "$TMP/ct.img"

# ---- errors
cp "$TMP/m.img.xz" "$TMP/bad.xz"
printf '\377\377\377\377\377\377\377\377' |
	dd of="$TMP/bad.xz" bs=1 seek=$(($(stat -c %s "$TMP/bad.xz") / 2)) conv=notrunc status=none
fails_with "a corrupt xz stream" "is corrupt: xz data" --image "$TMP/bad.xz" \
	--target "$TMP/e.img"
cp "$TMP/m.img.gz" "$TMP/bad.gz"
printf '\377\377\377\377\377\377\377\377' |
	dd of="$TMP/bad.gz" bs=1 seek=$(($(stat -c %s "$TMP/bad.gz") / 2)) conv=notrunc status=none
fails_with "a corrupt gzip stream" "is corrupt: gzip data" --image "$TMP/bad.gz" \
	--target "$TMP/e.img"
head -c $(($(stat -c %s "$TMP/m.img.zst") * 2 / 3)) "$TMP/m.img.zst" >"$TMP/short.zst"
fails_with "a truncated zstd image" "is truncated" --image "$TMP/short.zst" \
	--bmap "$TMP/m.bmap" --target "$TMP/e.img"
head -c $((size / 2)) "$TMP/m.img" >"$TMP/short.img"
fails_with "a truncated raw image with its bmap" "wrong bmap file or truncated image" \
	--image "$TMP/short.img" --bmap "$TMP/m.bmap" --target "$TMP/e.img"
sed 's/<MappedBlocksCount> *\([0-9]*\)/<MappedBlocksCount> 1\1/' "$TMP/m.bmap" >"$TMP/damaged.bmap"
fails_with "a damaged bmap file (its own checksum)" "own checksum does not match" \
	--image "$TMP/m.img" --bmap "$TMP/damaged.bmap" --target "$TMP/e.img"
# An image that does not match its bmap: one byte changed inside the payload's range.
cp "$TMP/m.img" "$TMP/changed.img"
big=$(sort -k2 -n -r "$TMP/ranges" | head -1)
printf 'X' | dd of="$TMP/changed.img" bs=1 seek=$((${big% *} + ${big#* } / 2)) conv=notrunc \
	status=none
fails_with "an image that does not match its bmap names the range" \
	"checksum mismatch in blocks $((${big% *} / 4096))-" --image "$TMP/changed.img" \
	--bmap "$TMP/m.bmap" --target "$TMP/e.img"
"$PROVSTATION" flash --image "$TMP/m.img" >/dev/null 2>"$TMP/err"
[ $? -eq 2 ] && [ "$(wc -l <"$TMP/err")" -eq 1 ] && grep -q "at least one --target" "$TMP/err"
check "no target: usage error, exit 2"
"$PROVSTATION" flash --image "$TMP/m.img" --target "$TMP/e.img" --frobnicate >/dev/null 2>&1
[ $? -eq 2 ]
check "unknown option: exit 2"
fails_with "the image itself as target is refused" "the image itself" --image "$TMP/m.img" \
	--target "$TMP/m.img"

# ---- fan-out: three files, one on an 8 MiB tmpfs that runs out of space midway
mkdir -p "$TMP/tiny"
if [ "$(id -u)" -eq 0 ] && mount -t tmpfs -o size=8m tmpfs "$TMP/tiny" 2>"$TMP/mount.err"; then
	at_exit "umount '$TMP/tiny'"
	rm -f "$TMP/fa.img" "$TMP/fb.img"
	"$PROVSTATION" flash --image "$TMP/m.img.xz" --bmap "$TMP/m.bmap" --target "$TMP/fa.img" \
		--target "$TMP/tiny/fc.img" --target "$TMP/fb.img" >"$TMP/out" 2>"$TMP/err"
	st=$?
	good=no
	[ $st -eq 1 ] && grep -q "^$TMP/fa.img: OK; $mapped bytes written, .*verified yes" "$TMP/out" &&
		grep -q "^$TMP/fb.img: OK; $mapped bytes written, .*verified yes" "$TMP/out" &&
		cmp -s "$TMP/m.img" "$TMP/fa.img" && cmp -s "$TMP/m.img" "$TMP/fb.img" && good=yes
	[ $good = yes ]
	check "fan-out: the two good targets finish, verify and equal the image"
	grep -q "^$TMP/tiny/fc.img: FAILED: writing at byte [0-9]*: No space left on device; [1-9][0-9]* bytes written" \
		"$TMP/out" && [ "$(wc -l <"$TMP/err")" -eq 1 ] &&
		grep -q "1 of 3 targets failed; $TMP/tiny/fc.img: .*No space left" "$TMP/err" ||
		good=no
	[ $good = yes ]
	check "fan-out: the full one fails midway with ENOSPC, named on one line"
	[ $good = yes ] || sed 's/^/#   /' "$TMP/out" "$TMP/err"
	umount "$TMP/tiny"
else
	reason="needs root to mount a tmpfs"
	[ "$(id -u)" -eq 0 ] && reason="cannot mount a tmpfs: $(head -1 "$TMP/mount.err")"
	echo "ok $((tap_n = tap_n + 1)) - # SKIP fan-out: $reason"
fi

# ---- loop devices
loop_reason=$(loop_unavailable)
loop_setup
if [ -z "$loop_reason" ]; then
	head -c "$size" /dev/zero | tr '\0' '\252' >"$TMP/disk"
	LOOP=$(loop_attach "$TMP/disk") || loop_reason="losetup: $(head -1 "$TMP/losetup.err")"
fi
if [ -z "$loop_reason" ]; then
	for ext in "" .gz .xz .zst; do
		name=${ext:-raw}
		name=${name#.}
		flash_ok "$name image with bmap to a loop device (mapped ranges)" "$LOOP" ranges \
			--image "$TMP/m.img$ext" --bmap "$TMP/m.bmap" --allow-unlisted --allow-fixed-disk
		if [ -n "$hole" ]; then
			[ "$(od -An -tx1 -N4 -j "$hole" "$LOOP" | tr -d ' ')" = aaaaaaaa ]
			check "$name with bmap: an unmapped block of the loop device is left alone"
		fi
		flash_ok "$name image without bmap to a loop device" "$LOOP" whole \
			--image "$TMP/m.img$ext" --allow-unlisted --allow-fixed-disk
		# the probed unmapped block gets the pattern back for the next run with a bmap
		[ -z "$hole" ] || head -c 4096 /dev/zero | tr '\0' '\252' |
			dd of="$LOOP" bs=4096 seek=$((hole / 4096)) oflag=direct status=none
	done
	fails_with "a loop device is refused without --allow-unlisted" "not a configured station slot" \
		--image "$TMP/m.img" --bmap "$TMP/m.bmap" --target "$LOOP" --allow-fixed-disk
	fails_with "a fixed disk (loop) is refused without --allow-fixed-disk" "fixed disk" \
		--image "$TMP/m.img" --bmap "$TMP/m.bmap" --target "$LOOP" --allow-unlisted

	# A 64 MiB disk: refused before writing when the size is known; otherwise at its end.
	truncate -s 64M "$TMP/small"
	SMALL=$(loop_attach "$TMP/small")
	fails_with "an image larger than the disk is refused before writing (bmap)" \
		"less than the $size needed" --image "$TMP/m.img.xz" --bmap "$TMP/m.bmap" \
		--target "$SMALL" --allow-unlisted --allow-fixed-disk
	[ "$(od -An -tx1 -N16 "$SMALL" | tr -d ' \n')" = 00000000000000000000000000000000 ]
	check "the small disk was not written"
	fails_with "an image larger than the disk is refused before writing (raw)" \
		"less than the $size needed" --image "$TMP/m.img" --target "$SMALL" \
		--allow-unlisted --allow-fixed-disk
	fails_with "a gzip image of unknown size stops cleanly at the disk's end" \
		"larger than the target" --image "$TMP/m.img.gz" --target "$SMALL" \
		--allow-unlisted --allow-fixed-disk
else
	echo "ok $((tap_n = tap_n + 1)) - # SKIP loop device targets: $loop_reason"
fi
done_testing
