#!/bin/bash
# card_pull.sh — a card pulled while the job writes it, on loop devices (root only):
#  1. pulled: at a random moment during `provstation provision`, the loop device shrinks to
#     one sector (LOOP_SET_STATUS64 size limit + LOOP_SET_CAPACITY), as a reader does when
#     the card goes: every later read comes back short and every write fails;
#  2. detached: `losetup -d` right after the job starts (the kernel keeps the device until
#     the job closes it, or the job finds no device at all).
# Every time: the job exits 0 (it finished first) or 1 with one line on stderr, never by a
# signal and without a sanitizer report; its audit row is verified, failed with the reason,
# or absent (refused before issuance); the image behind the device shows e2fsck -fn at most
# what e2fsck -p repairs without asking (never a name of a deleted inode: tests/imgcheck.sh),
# its
# key and certificate parse and match, and it provisions again. PULL_TRIALS (default 12).
# (The station, which sees the removal, restates such a row's reason as "card removed from
# slot X during the job: ..."; tests/test_station checks that on a loop device shrunk under
# a job.)
. "$SRCDIR/tests/lib.sh"
need losetup python3 e2fsck debugfs openssl sqlite3 sfdisk mkfs.ext4
PATH=/usr/sbin:/sbin:$PATH
[ "$(id -u)" -eq 0 ] || skip_all "loop devices need root"
[ -e /dev/loop-control ] || skip_all "no loop devices on this machine (/dev/loop-control missing)"
TRIALS=${PULL_TRIALS:-12}

"$PROVSTATION" ca init --dir "$TMP/ca" >/dev/null
cat >"$TMP/station.conf" <<CONF
[station]
database = $TMP/audit.db
[ca]
dir = $TMP/ca
[mender]
server_url = https://mender.example.com
CONF
printf '{\n  "InventoryPollIntervalSeconds": 28800\n}\n' >"$TMP/main.conf"
out=$("$SRCDIR/scripts/mkmenderimg.sh" --size 48 --main-conf "$TMP/main.conf" "$TMP/golden.img") ||
	skip_all "mkmenderimg.sh failed"
off=$(echo "$out" | awk '$6 == "data" { print $2 }')
loop_setup
. "$SRCDIR/tests/imgcheck.sh"

# The puller: opens the device now (python starts slowly), shrinks it when told to.
cat >"$TMP/pull.py" <<'PY'
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
sys.stdin.readline()
LOOP_SET_STATUS64, LOOP_GET_STATUS64, LOOP_SET_CAPACITY = 0x4C04, 0x4C05, 0x4C07
info = bytearray(232)  # struct loop_info64
fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
struct.pack_into("Q", info, 32, 512)  # lo_sizelimit
fcntl.ioctl(fd, LOOP_SET_STATUS64, bytes(info))
fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
PY
cp --sparse=always "$TMP/golden.img" "$TMP/probe.img"
LOOP=$(loop_attach "$TMP/probe.img") || skip_all "losetup cannot attach a loop device here"
echo go | python3 "$TMP/pull.py" "$LOOP" 2>"$TMP/pull.err" ||
	skip_all "cannot shrink a live loop device here: $(tail -1 "$TMP/pull.err")"
[ "$(blockdev --getsz "$LOOP")" -le 1 ] || skip_all "the loop device did not shrink"

# How long a job takes on a loop device.
cp --sparse=always "$TMP/golden.img" "$TMP/cal.img"
CAL=$(loop_attach "$TMP/cal.img")
t0=$(date +%s%3N)
"$PROVSTATION" provision --config "$TMP/station.conf" --target "$CAL" --serial CAL-1 \
	--allow-unlisted --allow-fixed-disk >/dev/null 2>&1 || skip_all "provisioning a loop device failed"
job_ms=$(($(date +%s%3N) - t0))
echo "# a job takes ${job_ms} ms on a loop device"

judge() { # judge KIND TRIAL STATUS IMAGE: the checks after one job; prints why on failure
	kind=$1 trial=$2 st=$3 image=$4
	serial=$kind-$trial
	lines=$(grep -c . "$TMP/job.err")
	if [ "$st" -ge 128 ]; then
		echo "the job ended by signal $((st - 128))"
		return 1
	fi
	if grep -q -E 'Sanitizer|runtime error' "$TMP/job.err"; then
		echo "sanitizer report: $(grep -m1 -E 'Sanitizer|runtime error' "$TMP/job.err")"
		return 1
	fi
	if [ "$st" -ne 0 ] && { [ "$lines" -ne 1 ] || ! grep -q '^provstation: ' "$TMP/job.err"; }; then
		echo "status $st with $lines lines on stderr: $(head -3 "$TMP/job.err")"
		return 1
	fi
	state=$(sqlite3 "$TMP/audit.db" "SELECT state || '|' || reason FROM certificates WHERE device_serial = '$serial'")
	case "$st:${state%%|*}" in
	0:verified | 1:failed | 1:) ;;
	*)
		echo "status $st but audit row '$state'"
		return 1
		;;
	esac
	if [ "${state%%|*}" = failed ] && [ -z "${state#*|}" ]; then
		echo "row failed without a reason"
		return 1
	fi
	outcome="${state%%|*}"
	echo "${outcome:-none}" >>"$TMP/outcomes.$kind"
	class=$(fsck_class "$image" "$off")
	echo "$class" >>"$TMP/classes.$kind"
	if [ "$class" = bad ] || [ "$class" = dangling ]; then
		echo "e2fsck -fn: $(grep -v -E '^(e2fsck|Pass)' "$TMP/fsck.out" | head -3 | tr '\n' ' ')"
		return 1
	fi
	why=$(check_files "$image" "$off" "$serial") || { echo "$why"; return 1; }
	# the card again, in a reader that works
	if ! "$PROVSTATION" provision --config "$TMP/station.conf" --target "$image" \
		--serial "$serial-again" >"$TMP/again.out" 2>&1; then
		if [ "$class" != clean ] && e2fsck -fp "$image?offset=$off" >/dev/null 2>&1 &&
			"$PROVSTATION" provision --config "$TMP/station.conf" --target "$image" \
				--serial "$serial-again2" >"$TMP/again.out" 2>&1; then
			echo "# $serial: provisioned again after e2fsck -p ($(head -1 "$TMP/again.out"))" >&2
		else
			echo "provisioning it again failed: $(head -1 "$TMP/again.out")"
			return 1
		fi
	fi
	return 0
}

summary() { # summary KIND: the counts of audit rows and e2fsck classes
	for what in outcomes classes; do
		[ -f "$TMP/$what.$1" ] || continue
		echo "#   $what: $(sort "$TMP/$what.$1" | uniq -c | awk '{printf "%s %s, ", $1, $2}')"
	done
}

# 1. Pulled at a random moment of the job.
failures=0
for trial in $(seq 1 "$TRIALS"); do
	cp --sparse=always "$TMP/golden.img" "$TMP/card.img"
	# every other card was provisioned once: its files are replaced
	[ $((trial % 2)) -eq 0 ] && "$PROVSTATION" provision --config "$TMP/station.conf" \
		--target "$TMP/card.img" --serial "FIRST-$trial" >/dev/null 2>&1
	dev=$(loop_attach "$TMP/card.img")
	mkfifo "$TMP/go"
	python3 "$TMP/pull.py" "$dev" <"$TMP/go" 2>"$TMP/pull.err" &
	puller=$!
	exec 8>"$TMP/go"
	sleep 0.5 # the puller has the device open and waits
	ms=$(($(od -An -N2 -tu2 /dev/urandom) % (job_ms + 1)))
	"$PROVSTATION" provision --config "$TMP/station.conf" --target "$dev" --serial "PULL-$trial" \
		--allow-unlisted --allow-fixed-disk >"$TMP/job.out" 2>"$TMP/job.err" &
	job=$!
	sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
	echo go >&8
	exec 8>&-
	wait "$job"
	st=$?
	wait "$puller"
	rm -f "$TMP/go"
	losetup -d "$dev"
	if ! why=$(judge PULL "$trial" "$st" "$TMP/card.img"); then
		failures=$((failures + 1))
		echo "# pull $trial (after $ms ms): $why"
	fi
	[ -n "${PULL_VERBOSE:-}" ] && echo "# pull $trial after $ms ms: status $st: $(cat "$TMP/job.err")"
done
bad_json=$(check_confs)
[ "$failures" -eq 0 ] && [ -z "$bad_json" ]
check "card pulled at a random moment, $TRIALS times: one-line error or success, audit row, image safe, provisions again"
summary PULL

# 2. Detached right after the start.
failures=0
for trial in 1 2 3 4 5 6; do
	cp --sparse=always "$TMP/golden.img" "$TMP/card.img"
	dev=$(loop_attach "$TMP/card.img")
	"$PROVSTATION" provision --config "$TMP/station.conf" --target "$dev" --serial "DETACH-$trial" \
		--allow-unlisted --allow-fixed-disk >"$TMP/job.out" 2>"$TMP/job.err" &
	job=$!
	[ "$trial" -gt 3 ] && sleep "0.0$((trial * 10))"
	losetup -d "$dev"
	wait "$job"
	st=$?
	if ! why=$(judge DETACH "$trial" "$st" "$TMP/card.img"); then
		failures=$((failures + 1))
		echo "# detach $trial: $why"
	fi
done
[ "$failures" -eq 0 ]
check "loop device detached while the job runs, 6 races: one-line error or success, audit row, image safe"
summary DETACH
[ "$(sqlite3 "$TMP/audit.db" 'PRAGMA integrity_check')" = ok ]
check "the audit database passes integrity_check"
done_testing
