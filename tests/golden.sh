# golden.sh — the golden-image fixture shared by tests/flash.sh and tests/provision_flash.sh
# (source it after lib.sh).

# golden_image NAME MIB PAYLOAD_MIB: a sparse Mender image $TMP/NAME.img of MIB MiB with
# PAYLOAD_MIB MiB of random data in a file of rootfs A; its bmap $TMP/NAME.bmap (bmaptool
# create); gzip, xz and zstd copies $TMP/NAME.img.gz, .xz, .zst; its partitions in
# $TMP/parts; its mapped ranges as "offset length" lines in $TMP/ranges, read by a real XML
# parser. Sets size, img_sha, rootfs_off and data_off. Skips the test when a tool fails.
golden_image() {
	gi_img=$TMP/$1.img
	"$SRCDIR/scripts/mkmenderimg.sh" --size "$2" "$gi_img" >"$TMP/parts" ||
		skip_all "mkmenderimg.sh failed"
	rootfs_off=$(awk '$6 == "rootfsA" {print $2}' "$TMP/parts")
	data_off=$(awk '$6 == "data" {print $2}' "$TMP/parts")
	head -c $(($3 * 1048576)) /dev/urandom >"$TMP/payload"
	debugfs -w -R "write $TMP/payload /payload.bin" "$gi_img?offset=$rootfs_off" >/dev/null 2>&1
	rm -f "$TMP/payload"
	size=$(stat -c %s "$gi_img")
	bmaptool create "$gi_img" >"$TMP/$1.bmap" 2>"$TMP/bmaptool.err" ||
		skip_all "bmaptool create failed: $(head -1 "$TMP/bmaptool.err")"
	gzip -1 -c "$gi_img" >"$gi_img.gz"
	xz -1 -T2 -c "$gi_img" >"$gi_img.xz"
	zstd -1 -q -c "$gi_img" >"$gi_img.zst"
	img_sha=$(sha256sum "$gi_img" | cut -c1-64)
	python3 - "$TMP/$1.bmap" >"$TMP/ranges" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
bs, size = int(root.find("BlockSize").text), int(root.find("ImageSize").text)
for r in root.find("BlockMap").findall("Range"):
    a, _, b = r.text.strip().partition("-")
    first, last = int(a), int(b or a)
    print(first * bs, min((last + 1) * bs, size) - first * bs)
PY
}
