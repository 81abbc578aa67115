#!/bin/sh
# devices.sh — `provstation devices`: a USB card reader and an SD card replayed by umockdev are
# listed with slot, serial and verdict; on this machine, a loop device made a slot by its node
# is listed with its slot, serial and safety verdict (text and JSON, with and without
# allow_fixed); --watch reports loop devices attached and detached, one line per event, and
# stops cleanly on SIGTERM and SIGINT.
. "$SRCDIR/tests/lib.sh"
need python3

ok "--help shows how to copy ID_PATH into a slot's ports" \
	sh -c '"$1" devices --help | grep -q "^  ports = pci-"' sh "$PROVSTATION"
"$PROVSTATION" devices --bogus >/dev/null 2>"$TMP/usage.err"
[ $? -eq 2 ] && grep -q "devices --help" "$TMP/usage.err"
check "an unknown option is a usage error (status 2)"

: >"$TMP/empty.conf"
ok "devices lists this machine's disks" "$PROVSTATION" devices --config "$TMP/empty.conf"
"$PROVSTATION" devices --config "$TMP/empty.conf" --json >"$TMP/all.json"
python3 - "$TMP/all.json" <<'PY'
import json, sys
devices = json.load(open(sys.argv[1]))
assert isinstance(devices, list)
for d in devices:
    assert d["type"] in ("disk", "board"), d
    if d["type"] == "disk":
        assert d["slot"] is None and d["safe"] in (True, False) and d["safety"], d
PY
check "--json is an array of disks, none a slot without configuration"

# A USB card reader with a card and an SD card on an MMC host, replayed by umockdev: the
# real command on devices this machine does not have.
if command -v umockdev-run >/dev/null 2>&1; then
	cat >"$TMP/bed.umockdev" <<'BED'
P: /devices/pci0000:00/0000:00:14.0
E: SUBSYSTEM=pci

P: /devices/pci0000:00/0000:00:14.0/usb1
E: SUBSYSTEM=usb
E: DEVTYPE=usb_device
A: busnum=1
A: devpath=0

P: /devices/pci0000:00/0000:00:14.0/usb1/1-2
E: SUBSYSTEM=usb
E: DEVTYPE=usb_device
A: busnum=1
A: devnum=3
A: devpath=2
A: idVendor=0bda
A: idProduct=0129
A: serial=000000001234

P: /devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0
E: SUBSYSTEM=scsi
E: DEVTYPE=scsi_device
A: vendor=Generic-
A: model=SD/MMC          

P: /devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb
N: sdb
E: SUBSYSTEM=block
E: DEVTYPE=disk
E: DEVNAME=/dev/sdb
E: MAJOR=8
E: MINOR=16
E: ID_BUS=usb
E: ID_PATH=pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0
A: size=62333952
A: removable=1
A: ro=0
A: dev=8:16

P: /devices/pci0000:00/0000:00:14.0/usb1/1-4
E: SUBSYSTEM=usb
E: DEVTYPE=usb_device
A: busnum=1
A: devnum=5
A: devpath=4
A: idVendor=0a5c
A: idProduct=2711
A: serial=c0ffee01

P: /devices/platform/fe320000.mmc/mmc_host/mmc0/mmc0:aaaa
E: SUBSYSTEM=mmc
A: serial=0x1a2b3c4d
A: name=SC32G
A: type=SD

P: /devices/platform/fe320000.mmc/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0
N: mmcblk0
E: SUBSYSTEM=block
E: DEVTYPE=disk
E: DEVNAME=/dev/mmcblk0
E: MAJOR=179
E: MINOR=0
E: ID_PATH=platform-fe320000.mmc
A: size=62333952
A: removable=0
A: ro=0
A: dev=179:0
BED
	cat >"$TMP/readers.conf" <<'CONF'
[slot front-left]
ports = pci-0000:00:14.0-usb-0:2:1.0-*
serial_source = usb
[slot sd]
ports = platform-fe320000.mmc
serial_source = cid
[slot cm4]
ports = pci-0000:00:14.0-usb-0:4, pci-0000:00:14.0-usb-0:4:1.0-*
[board cm4]
usb_id = 0a5c:2711
helper = rpiboot -p {port}
CONF
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
		umockdev-run -d "$TMP/bed.umockdev" -- "$PROVSTATION" devices \
		--config "$TMP/readers.conf" --json >"$TMP/bed.json" 2>"$TMP/bed.err"
	python3 - "$TMP/bed.json" <<'PY'
import json, sys
disks = {d["node"]: d for d in json.load(open(sys.argv[1])) if d["type"] == "disk"}
sdb, mmc = disks["/dev/sdb"], disks["/dev/mmcblk0"]
assert sdb["slot"] == "front-left" and sdb["serial"] == "000000001234", sdb
assert sdb["usb"] == {"vid": "0bda", "pid": "0129", "serial": "000000001234", "port": "1-2"}, sdb
assert sdb["vendor"] == "Generic-" and sdb["model"] == "SD/MMC" and sdb["bus"] == "usb", sdb
assert sdb["size"] == 62333952 * 512 and sdb["removable"] and sdb["safe"], sdb
assert mmc["slot"] == "sd" and mmc["serial"] == "0x1a2b3c4d" and mmc["bus"] == "mmc", mmc
assert mmc["cid_serial"] == "0x1a2b3c4d" and mmc["usb"] is None and mmc["safe"], mmc
PY
	check "umockdev: a USB reader's card and an SD card, each with its slot, serial and verdict"
	python3 - "$TMP/bed.json" <<'PY'
import json, sys
boards = [d for d in json.load(open(sys.argv[1])) if d["type"] == "board"]
assert len(boards) == 1, boards
b = boards[0]
assert (b["vid"], b["pid"], b["serial"], b["port"]) == ("0a5c", "2711", "c0ffee01", "1-4"), b
assert b["id_path"] == "pci-0000:00:14.0-usb-0:4" and b["board"] == "cm4" and b["slot"] == "cm4", b
assert b["helper"] == "rpiboot -p '1-4'" and b["timeout"] == 60, b
PY
	check "umockdev: a CM4 in rpiboot mode is the board cm4 on slot cm4 with the helper it would run; other USB devices are not boards"
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
		umockdev-run -d "$TMP/bed.umockdev" -- "$PROVSTATION" devices \
		--config "$TMP/readers.conf" >"$TMP/bed.txt" 2>&1
	grep -q "^USB board 0a5c:2711 at port 1-4$" "$TMP/bed.txt" &&
		grep -q "^  board     cm4, in a boot or recovery mode$" "$TMP/bed.txt" &&
		grep -q "^  helper    rpiboot -p '1-4'$" "$TMP/bed.txt" &&
		grep -q "^  then      60 s for a disk to appear on port 1-4$" "$TMP/bed.txt" &&
		grep -q "^  USB       0bda:0129 serial 000000001234, port 1-2$" "$TMP/bed.txt" &&
		grep -q "^  SD card   CID serial 0x1a2b3c4d$" "$TMP/bed.txt"
	check "umockdev: the text listing shows the reader's USB parent, the card's CID, the board and its helper"
	[ $tap_failed -eq 0 ] || sed 's/^/#   /' "$TMP/bed.txt"
	[ $tap_failed -eq 0 ] || sed 's/^/#   /' "$TMP/bed.json" "$TMP/bed.err" | head -60
else
	for i in 1 2 3; do
		echo "ok $((tap_n = tap_n + 1)) # SKIP umockdev-run is not installed"
	done
fi

need losetup
[ "$(id -u)" -eq 0 ] || skip_all "loop devices need root"
[ -e /dev/loop-control ] || skip_all "no loop devices here (/dev/loop-control missing)"
loops=""
watch_pid=""
at_exit 'for l in $loops; do losetup -d "$l"; done; [ -n "$watch_pid" ] && kill "$watch_pid"'
truncate -s 64M "$TMP/a.img" "$TMP/b.img"
LOOP=$(losetup -f --show "$TMP/a.img") || skip_all "losetup cannot attach a loop device here"
loops="$LOOP"

cat >"$TMP/slot.conf" <<CONF
[slot rig]
ports = $LOOP
serial_source = sequence
serial_prefix = RIG-
allow_fixed = true
CONF
sed '/allow_fixed/d' "$TMP/slot.conf" >"$TMP/fixed.conf"

"$PROVSTATION" devices --config "$TMP/slot.conf" >"$TMP/list.txt"
sed -n "\\|^$LOOP |,/^\$/p" "$TMP/list.txt" >"$TMP/loop.txt"
grep -q "^  slot      rig$" "$TMP/loop.txt" &&
	grep -q "^  serial    (next in sequence, prefix 'RIG-') (sequence)$" "$TMP/loop.txt" &&
	grep -q "^  safety    ok$" "$TMP/loop.txt"
check "a loop device in a slot: its slot, its serial source, safe with allow_fixed"
[ -s "$TMP/loop.txt" ] || sed 's/^/#   /' "$TMP/list.txt"

"$PROVSTATION" devices --config "$TMP/fixed.conf" >"$TMP/list.txt"
sed -n "\\|^$LOOP |,/^\$/p" "$TMP/list.txt" | grep -q "^  safety    refused: .*fixed disk"
check "without allow_fixed the safety gate refuses it as a fixed disk"

"$PROVSTATION" devices --config "$TMP/slot.conf" --json >"$TMP/slot.json"
python3 - "$TMP/slot.json" "$LOOP" <<'PY'
import json, sys
disk = [d for d in json.load(open(sys.argv[1])) if d.get("node") == sys.argv[2]][0]
assert disk["slot"] == "rig" and disk["serial_source"] == "sequence", disk
assert disk["safe"] is True and disk["safety"] == "ok", disk
assert disk["size"] == 64 << 20 and disk["id_path"] is None and disk["usb"] is None, disk
PY
check "--json: the loop device's slot, serial source, size and verdict"

# --watch: the devices present first, then a loop device attached and detached.
cat >"$TMP/watch.conf" <<CONF
[slot rig]
ports = /dev/loop*
allow_fixed = true
CONF
wait_for() { # wait_for FILE PATTERN: up to 10 s for a line matching PATTERN
	i=0
	while ! grep -q -- "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt 100 ] && return 1
		sleep 0.1
	done
}
"$PROVSTATION" devices --watch --config "$TMP/watch.conf" >"$TMP/watch.out" 2>"$TMP/watch.err" &
watch_pid=$!
wait_for "$TMP/watch.out" " disk-added $LOOP "
check "--watch reports the disks present as added"
LOOP2=$(losetup -f --show "$TMP/b.img") && loops="$loops $LOOP2"
wait_for "$TMP/watch.out" " disk-added $LOOP2 .*slot=rig"
check "--watch: a loop device attached is added, in slot rig (/dev/loop*)"
losetup -d "$LOOP2" && loops="$LOOP"
wait_for "$TMP/watch.out" " disk-removed $LOOP2 "
check "--watch: detached, it is removed"
kill -TERM "$watch_pid"
wait "$watch_pid"
status=$?
watch_pid=""
[ $status -eq 0 ] && [ ! -s "$TMP/watch.err" ]
check "--watch ends cleanly on SIGTERM (status $status)"
# (Other tests may attach the same loop device afterwards: only the first two lines count.)
[ "$(grep " $LOOP2 " "$TMP/watch.out" | head -2 | cut -d' ' -f2 | tr '\n' ' ')" = \
	"disk-added disk-removed " ]
check "one line per event: added once, then removed once"
[ $tap_failed -eq 0 ] || sed 's/^/#   /' "$TMP/watch.out" "$TMP/watch.err"

"$PROVSTATION" devices --watch --json --config "$TMP/watch.conf" >"$TMP/watch.json" &
watch_pid=$!
wait_for "$TMP/watch.json" "\"node\": *\"$LOOP\""
kill -INT "$watch_pid"
wait "$watch_pid"
status=$?
watch_pid=""
python3 - "$TMP/watch.json" "$LOOP" <<'PY'
import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
mine = [e for e in events if e.get("node") == sys.argv[2]]
assert mine and mine[0]["event"] == "disk-added" and mine[0]["slot"] == "rig", events
assert all("time" in e and "event" in e for e in events), events
PY
[ $? -eq 0 ] && [ $status -eq 0 ]
check "--watch --json: one JSON object per line; ends cleanly on SIGINT"
done_testing
