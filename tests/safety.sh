#!/bin/sh
# safety.sh — the safety gate on real block devices (loop devices): the system disk, a fixed
# disk, a disk outside the station's slots, a read-only disk, a mounted one (ext4, and both
# devices of a two-device btrfs, which mountinfo shows as 0:NN) and a character device are
# each refused with the reason and left untouched; an allowed one is provisioned.
. "$SRCDIR/tests/lib.sh"
need losetup sfdisk mkfs.ext4 sha256sum
[ "$(id -u)" -eq 0 ] || skip_all "loop devices need root"
[ -e /dev/loop-control ] || skip_all "no loop devices on this machine (/dev/loop-control missing)"

cat >"$TMP/station.conf" <<CONF
[station]
database = $TMP/audit.db
[ca]
dir = $TMP/ca
CONF
"$PROVSTATION" ca init --dir "$TMP/ca" >/dev/null
"$SRCDIR/scripts/mkmenderimg.sh" --size 64 "$TMP/disk.img" >/dev/null
loop_setup
at_exit 'umount "$TMP/mnt" 2>/dev/null'
LOOP=$(loop_attach "$TMP/disk.img") || skip_all "losetup cannot attach a loop device here"

refused() { # refused DESC PATTERN TARGET [FLAGS...]: one line naming PATTERN, non-zero, untouched
	desc=$1 pattern=$2 target=$3
	shift 3
	before=$(sha256sum "$TMP/disk.img" | cut -d' ' -f1)
	"$PROVSTATION" provision --config "$TMP/station.conf" --target "$target" --serial SAFE-1 \
		"$@" >"$TMP/out" 2>"$TMP/err"
	status=$?
	after=$(sha256sum "$TMP/disk.img" | cut -d' ' -f1)
	if [ $status -ne 0 ] && [ "$(wc -l <"$TMP/err")" -eq 1 ] &&
		grep -q -- "$pattern" "$TMP/err" && [ "$before" = "$after" ]; then
		check "$desc"
	else
		false
		check "$desc"
		sed 's/^/#   /' "$TMP/err"
	fi
}

root_src=$(findmnt -no SOURCE / 2>/dev/null)
if [ -b "$root_src" ]; then
	root_disk=/dev/$(lsblk -no PKNAME "$root_src" 2>/dev/null | head -1)
	[ "$root_disk" = /dev/ ] && root_disk=$root_src
	refused "the system disk ($root_disk) is refused" "running system\|mounted on" "$root_disk" \
		--allow-unlisted --allow-fixed-disk
else
	echo "ok $((tap_n = tap_n + 1)) - # SKIP the root filesystem is not on a block device ($root_src)"
fi
refused "a fixed disk (loop) is refused" "fixed disk" "$LOOP" --allow-unlisted
refused "a disk in no slot is refused" "not a configured station slot" "$LOOP" --allow-fixed-disk
refused "a character device is refused" "neither an image file nor a block device" /dev/null \
	--allow-unlisted --allow-fixed-disk

RO=$(loop_attach -r "$TMP/disk.img")
refused "a read-only disk is refused" "read-only" "$RO" --allow-unlisted --allow-fixed-disk

# A mounted disk: a bare ext4 filesystem on a loop device, mounted.
truncate -s 32M "$TMP/bare.img" && mkfs.ext4 -q "$TMP/bare.img"
BARE=$(loop_attach "$TMP/bare.img")
mkdir -p "$TMP/mnt"
if mount "$BARE" "$TMP/mnt" 2>"$TMP/mount.err"; then
	refused "a mounted disk is refused, naming the mount point" "mounted on $TMP/mnt" "$BARE" \
		--allow-unlisted --allow-fixed-disk
	umount "$TMP/mnt"
else
	echo "ok $((tap_n = tap_n + 1)) - # SKIP cannot mount here: $(head -1 "$TMP/mount.err")"
fi

# btrfs: mountinfo shows an anonymous device number (0:NN), not the disk's. A two-device
# btrfs (raid1) on two loop devices, mounted through the first: both are refused.
skip_btrfs() {
	for i in 1 2 3 4 5; do
		echo "ok $((tap_n = tap_n + 1)) - # SKIP $1"
	done
}
if ! command -v mkfs.btrfs >/dev/null 2>&1; then
	skip_btrfs "mkfs.btrfs is not installed (btrfs-progs)"
elif ! grep -qw btrfs /proc/filesystems && ! modprobe btrfs 2>/dev/null; then
	skip_btrfs "this kernel has no btrfs"
else
	truncate -s 128M "$TMP/bt1.img" "$TMP/bt2.img"
	BT1=$(loop_attach "$TMP/bt1.img") && BT2=$(loop_attach "$TMP/bt2.img")
	mkdir -p "$TMP/btrfs"
	if ! mkfs.btrfs -q -f -d raid1 -m raid1 "$BT1" "$BT2" >"$TMP/mkfs.err" 2>&1; then
		skip_btrfs "mkfs.btrfs failed: $(head -1 "$TMP/mkfs.err")"
	# Read-only, so that btrfs itself does not write to the devices while the test looks.
	elif ! mount -t btrfs -o ro "$BT1" "$TMP/btrfs" 2>"$TMP/mount.err"; then
		skip_btrfs "cannot mount btrfs here: $(head -1 "$TMP/mount.err")"
	else
		at_exit 'umount "$TMP/btrfs" 2>/dev/null'
		grep -q " $TMP/btrfs .* - btrfs " /proc/self/mountinfo &&
			! grep -q "^[0-9]* [0-9]* $(lsblk -dno MAJ:MIN "$BT1" | tr -d ' ') " /proc/self/mountinfo
		check "btrfs is mounted with an anonymous device number, not $BT1's"
		refused "a btrfs disk is refused as mounted" "$BT1 is in use: $BT1 is mounted on $TMP/btrfs" \
			"$BT1" --allow-unlisted --allow-fixed-disk
		refused "the second device of a two-device btrfs is refused as mounted" \
			"$BT2 is in use: $BT2 belongs to the btrfs filesystem of $BT1, mounted on $TMP/btrfs" \
			"$BT2" --allow-unlisted --allow-fixed-disk
		before=$(sha256sum "$TMP/bt2.img" | cut -d' ' -f1)
		"$PROVSTATION" flash --image "$TMP/disk.img" --target "$BT2" --allow-unlisted \
			--allow-fixed-disk >"$TMP/out" 2>"$TMP/err"
		status=$?
		[ $status -ne 0 ] && grep -q "$BT2.*mounted" "$TMP/out" "$TMP/err" &&
			[ "$(sha256sum "$TMP/bt2.img" | cut -d' ' -f1)" = "$before" ]
		check "flash refuses the second btrfs device as mounted, and leaves it untouched"
		umount "$TMP/btrfs"
		# The kernel lets the devices go when the filesystem is torn down, which can come a
		# little after umount returns; until then the gate rightly refuses them.
		i=0
		while [ $i -lt 100 ] && ls /sys/fs/btrfs/*/devices/"${BT2#/dev/}" >/dev/null 2>&1; do
			sleep 0.1
			i=$((i + 1))
		done
		"$PROVSTATION" flash --image "$TMP/disk.img" --target "$BT2" --allow-unlisted \
			--allow-fixed-disk >"$TMP/out" 2>&1
		check "once unmounted, flash writes it" || sed "s/^/#   /" "$TMP/out"
	fi
fi

ok "an allowed loop device is provisioned" "$PROVSTATION" provision --config "$TMP/station.conf" \
	--target "$LOOP" --serial SAFE-2 --allow-unlisted --allow-fixed-disk
ok "and verifies" "$PROVSTATION" verify --config "$TMP/station.conf" --target "$LOOP"
"$PROVSTATION" export --config "$TMP/station.conf" --format csv >"$TMP/export.csv"
[ "$(grep -c 'SAFE-1' "$TMP/export.csv")" -eq 0 ] && [ "$(grep -c '^SAFE-2,' "$TMP/export.csv")" -eq 1 ]
check "refusals issued no certificate; the allowed write has one row"
done_testing
