#!/bin/sh
# tui.sh — the station's screen, driven for real: `provstation station` runs in tmux on a
# workspace of image-file slots, keys are sent as an operator (or a barcode scanner) types
# them, and every check reads the screen (tmux capture-pane) with bounded waits. Covers a PASS
# checked with debugfs and openssl, refused serials, a FAIL on a corrupt image, a serial seen
# before, the audit view, export, help, the bell, monochrome and ASCII at 80x24, a resize
# and a quit while a job runs, eight slots busy at once, and the passphrase asked before
# the screen starts. Flashing: an image-file slot with slots_flash, and a slot on a loop
# device (as root) with flash, go FLASHING with a progress bar, then PASS with the image's
# name and SHA-256 in the audit row.
. "$SRCDIR/tests/lib.sh"
need tmux python3 openssl debugfs sfdisk mkfs.ext4 mkfs.vfat pgrep
PATH=$PATH:/usr/sbin:/sbin
unset PROVSTATION_CONFIG PROVSTATION_CA_PASSPHRASE NO_COLOR
PS=$PROVSTATION
MKIMG=$SRCDIR/scripts/mkmenderimg.sh
W=$TMP/ws
SOCK=ps-test-$$
DB=$W/audit.db

tm() { tmux -L "$SOCK" "$@"; }
at_exit "tmux -L $SOCK kill-server; rm -f '${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)/$SOCK'"
at_exit 'touch "$TMP/lock.release"'

# start NAME COLUMNS ROWS LOCALE [ARGS...]: the station in a new tmux session; when it exits
# the pane shows EXIT=<status>
start() {
	name=$1 cols=$2 rows=$3 loc=$4
	shift 4
	tm new-session -d -s "$name" -x "$cols" -y "$rows" \
		"env LC_ALL=$loc PROVSTATION_DB_BUSY_MS=60000 $PS station --config $W/station.conf $*; echo EXIT=\$?; sleep 600"
}
screen() { tm capture-pane -p -t "$1" 2>/dev/null; }
# wait_for SESSION REGEX [SECONDS]: poll the screen every 0.1 s until a line matches
wait_for() {
	n=$((${3:-10} * 10))
	while [ $n -gt 0 ]; do
		screen "$1" >"$TMP/screen"
		grep -q -E -- "$2" "$TMP/screen" && return 0
		sleep 0.1
		n=$((n - 1))
	done
	echo "timed out waiting for: $2"
	cat "$TMP/screen"
	return 1
}
# gone SESSION REGEX [SECONDS]: wait until no line matches
gone() {
	n=$((${3:-10} * 10))
	while [ $n -gt 0 ]; do
		screen "$1" >"$TMP/screen"
		grep -q -E -- "$2" "$TMP/screen" || return 0
		sleep 0.1
		n=$((n - 1))
	done
	echo "still on screen: $2"
	cat "$TMP/screen"
	return 1
}
keys() { tm send-keys -t "$@"; }
# row SESSION SLOT: the slot's row on the screen
row() { screen "$1" | grep -E "^. $2 " | head -1; }
# choose SESSION SLOT: move the highlight (Up/Down) until the input line names SLOT
choose() {
	i=0
	while [ $i -lt 12 ]; do
		screen "$1" | grep -q "^Serial for $2:" && return 0
		keys "$1" Down
		i=$((i + 1))
		sleep 0.1
		if [ $i -eq 6 ]; then
			for _ in 1 2 3 4 5 6 7 8; do keys "$1" Up; done
		fi
	done
	echo "could not choose $2"
	screen "$1"
	return 1
}
# wait_count SESSION REGEX N [SECONDS]: wait until at least N lines match
wait_count() {
	n=$((${4:-10} * 10))
	while [ $n -gt 0 ]; do
		screen "$1" >"$TMP/screen"
		[ "$(grep -c -E -- "$2" "$TMP/screen")" -ge "$3" ] && return 0
		sleep 0.1
		n=$((n - 1))
	done
	echo "fewer than $3 lines match: $2"
	cat "$TMP/screen"
	return 1
}
# bell SESSION: 1 when the bell rang in the session's window
bell() { tm display -p -t "$1" '#{window_bell_flag}'; }
# export_field ROW COLUMN: one field of the audit export (ROW 0 is the oldest, -1 the newest)
export_field() {
	"$PS" export --format csv --db "$DB" | python3 -c '
import csv, sys
print(list(csv.DictReader(sys.stdin))[int(sys.argv[1])][sys.argv[2]])' "$1" "$2"
}
# export_rows: the audit rows as CSV lines (without the header)
export_rows() { "$PS" export --format csv --db "$DB" | tail -n +2; }
# lock_db / unlock_db: hold the audit database's write lock, as another process might; jobs
# wait for it (busy timeout), which makes them long enough to act during them
lock_db() {
	rm -f "$TMP/locked" "$TMP/lock.release"
	python3 - "$DB" "$TMP/locked" "$TMP/lock.release" <<'EOF' &
import os, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN EXCLUSIVE")
open(sys.argv[2], "w").close()
deadline = time.time() + 60
while not os.path.exists(sys.argv[3]) and time.time() < deadline:
    time.sleep(0.05)
c.execute("ROLLBACK")
EOF
	lock_pid=$!
	n=100
	while [ ! -e "$TMP/locked" ] && [ $n -gt 0 ]; do
		sleep 0.1
		n=$((n - 1))
	done
	[ -e "$TMP/locked" ]
}
unlock_db() {
	touch "$TMP/lock.release"
	wait "$lock_pid"
}

# hold_lease FILE / release_lease: hold a write lease on FILE, as a reader might; the station's
# open of it for writing waits until it is released, which keeps a flashing slot in FLASHING
hold_lease() {
	rm -f "$TMP/leased" "$TMP/lease.release"
	python3 - "$1" "$TMP/leased" "$TMP/lease.release" <<'EOF' &
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease break's signal
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE
open(sys.argv[2], "w").close()
deadline = time.time() + 40
while not os.path.exists(sys.argv[3]) and time.time() < deadline:
    time.sleep(0.05)
os.close(fd)
EOF
	lease_pid=$!
	n=100
	while [ ! -e "$TMP/leased" ] && [ $n -gt 0 ] && kill -0 "$lease_pid" 2>/dev/null; do
		sleep 0.1
		n=$((n - 1))
	done
	[ -e "$TMP/leased" ]
}
release_lease() {
	touch "$TMP/lease.release"
	wait "$lease_pid"
}
at_exit 'touch "$TMP/lease.release"'

# ---- the workspace: a CA, station.conf, an image-file slot ----
mkdir -p "$W/slots" "$W/staging"
"$PS" ca init --dir "$W/ca" >/dev/null || skip_all "ca init failed"
"$MKIMG" --size 64 "$W/staging/good1.img" >"$TMP/layout" 2>"$TMP/mkimg.err" ||
	skip_all "mkmenderimg.sh failed: $(tail -1 "$TMP/mkimg.err")"
DATA_OFF=$(awk '$6 == "data" { print $2 }' "$TMP/layout")
cp --sparse=always "$W/staging/good1.img" "$W/staging/template.img"
mv "$W/staging/good1.img" "$W/slots/good1.img"
cat >"$W/station.conf" <<EOF
[station]
id = tui-test-station
database = $DB
batch = TUI-BATCH
slots_dir = $W/slots
serial_pattern = ^SN-[0-9]+\$
hotplug = false
[ca]
dir = $W/ca
[device]
common_name = {serial}.devices.example.com
EOF

# ---- 100x30, UTF-8, colour ----
start a 100 30 C.UTF-8
ok "the screen shows the slot waiting for its serial" wait_for a '^. good1\.img .*WAITING FOR SERIAL'
ok "the input line names the slot the serial goes to" wait_for a '^Serial for good1\.img:'
screen a >"$TMP/s"
grep -q "station tui-test-station" "$TMP/s" && grep -q "batch TUI-BATCH" "$TMP/s"
check "header: station id and batch"
grep -q "today: 0 PASS  0 FAIL" "$TMP/s"
check "header: today's counts"
grep -q "CA /CN=provstation device CA  expires [0-9-]*" "$TMP/s" ||
	grep -q "CA .*expires [0-9]\{4\}-[0-9][0-9]-[0-9][0-9]" "$TMP/s"
check "header: CA subject and expiry"
grep -q "preauth off" "$TMP/s" && grep -q "audit .*audit\.db" "$TMP/s"
check "header: preauthorization state and the audit database"
tail -1 "$TMP/s" | grep -q "F1/? Help.*F3 Audit.*F4 Export.*F10/q Quit"
check "function-key bar with letter aliases on an empty input line"
[ "$(bell a)" = 0 ]
check "no bell yet"

keys a 'SN-1001' Enter
ok "a scanned serial provisions the slot: PASS" wait_for a '^. good1\.img .*SN-1001 .* PASS '
ok "the log has the PASS line with the commonName" \
	wait_for a 'PASS good1\.img: SN-1001, SN-1001\.devices\.example\.com'
ok "today's count of passes" wait_for a 'today: 1 PASS  0 FAIL'
[ "$(bell a)" = 1 ]
check "PASS rings the bell"
tm capture-pane -e -p -t a | grep -a "good1.img" | grep -a -q "$(printf '\033')\[[0-9;]*4[0-9]m PASS"
check "PASS in colour (a background colour behind the word)"

stat_out=$(debugfs -R "stat /mender/mender-cert-private.pem" "$W/slots/good1.img?offset=$DATA_OFF" 2>/dev/null)
echo "$stat_out" | grep -q "Mode:  0600" && echo "$stat_out" | grep -q "User:     0   Group:     0"
check "debugfs: the image's data partition has the private key, 0600 root:root"
debugfs -R "cat /mender/mender-cert.pem" "$W/slots/good1.img?offset=$DATA_OFF" 2>/dev/null >"$TMP/cert.pem"
openssl x509 -in "$TMP/cert.pem" -noout -subject 2>/dev/null | grep -q "CN *= *SN-1001.devices.example.com" &&
	openssl verify -CAfile "$W/ca/ca-cert.pem" "$TMP/cert.pem" >/dev/null 2>&1
check "the certificate in the image names SN-1001 and chains to the CA (openssl)"

# refused serials: validated on the spot, shown on the input line, kept for correction
keys a Up F6
ok "F6 resets the finished image slot" wait_for a '^. good1\.img .*WAITING FOR SERIAL'
keys a 'BAD-7' Enter
ok "a serial not matching serial_pattern is refused on the input line" \
	wait_for a "^Serial for good1\.img: BAD-7 .*does not match the pattern"
ok "the slot still waits" wait_for a '^. good1\.img .*WAITING FOR SERIAL'
keys a C-u "SN-$(printf '%070d' 7)" Enter
ok "an over-long serial is refused" wait_for a "serial is [0-9]+ bytes long, more than 64"
keys a C-u
ok "Ctrl-U clears the input line and its error" gone a "more than 64"
keys a 'q1'
ok "a letter alias followed by more keys (a scanner) is serial text" \
	wait_for a '^Serial for good1\.img: q1'
gone a 'quit anyway' 1
check "no quit question for a typed q"
keys a C-u

# a serial seen before: its history, then y/N
keys a 'SN-1001' Enter
ok "a serial seen before shows its history" wait_for a 'SN-1001 has 1 certificate'
ok "and asks before re-provisioning" wait_for a 'Re-provision SN-1001 on good1\.img .*y/N'
keys a n
ok "n: not re-provisioned, the serial stays on the input line" \
	wait_for a '^Serial for good1\.img: SN-1001'
keys a Enter
ok "asked again" wait_for a 'Re-provision SN-1001'
keys a y
ok "y: re-provisioned, PASS" wait_for a 'today: 2 PASS  0 FAIL'
[ "$(export_rows | grep -c '^SN-1001,')" -eq 2 ]
check "the audit database has both certificates of SN-1001"

# a corrupt image: FAIL with its reason
head -c 1048576 /dev/urandom >"$W/staging/x.img"
mv "$W/staging/x.img" "$W/slots/x.img"
ok "an image file put in the slots directory becomes a slot" wait_for a '^. x\.img .*WAITING FOR SERIAL'
ok "the serial now goes to it (the only slot waiting)" wait_for a '^Serial for x\.img:'
keys a 'SN-1002' Enter
ok "the corrupt image FAILs" wait_for a '^. x\.img .*SN-1002 .* FAIL '
ok "with its reason on screen" wait_for a 'x\.img is not a disk image'
ok "today's count of failures" wait_for a 'today: 2 PASS  1 FAIL'
tm capture-pane -e -p -t a | grep -a "x.img" | grep -a -q "$(printf '\033')\[[0-9;]*4[0-9]m FAIL"
check "FAIL in colour"

# help, audit view, export
keys a F1
ok "F1 shows the help" wait_for a "OPERATOR'S FLOW"
keys a Escape
ok "Esc closes it" gone a "OPERATOR'S FLOW"
keys a '?'
ok "? on an empty line shows the help" wait_for a "OPERATOR'S FLOW"
keys a Down Down Down Down Down Down Down Down Down Down
ok "Down scrolls the help" wait_for a "LETTER ALIASES"
keys a q
ok "q closes the help (and does not quit)" gone a "LETTER ALIASES"
keys a F3
ok "F3 opens the audit view (the FAIL before issuance recorded nothing)" \
	wait_for a "2 certificates, newest first"
keys a Enter
ok "Enter shows the selected (first) row's details" wait_for a "pubkey sha256 +[0-9a-f]{16}"
newest=$(export_field -1 cert_serial)
screen a >"$TMP/s"
grep -q "certificate $newest" "$TMP/s"
check "the first row is the newest certificate"
grep -q "state *verified" "$TMP/s" && grep -q "station *tui-test-station" "$TMP/s" &&
	grep -q "batch *TUI-BATCH" "$TMP/s" && grep -q "not after *20[0-9][0-9]-" "$TMP/s" &&
	grep -q "commonName *SN-1001.devices" "$TMP/s" && grep -q "cert serial *$newest" "$TMP/s" &&
	grep -q "serial *SN-1001" "$TMP/s" && grep -q "operator " "$TMP/s"
check "details: serial, commonName, cert serial, validity, state, station, operator, batch"
keys a Escape
ok "Esc goes back to the list" wait_for a "Search \(serial, commonName"
keys a 'SN-1001' Enter
ok "search by serial" wait_for a "2 certificates, newest first"
keys a C-u "$(export_field 0 cert_serial | cut -c1-12)" Enter
ok "search by a part of a certificate serial" wait_for a "1 certificate, newest first"
keys a C-u 'SN-1001.devices.example.com' Enter
ok "search by commonName" wait_for a "2 certificates, newest first"
keys a C-u 'SN-1002' Enter
ok "a serial that never got a certificate: nothing" wait_for a "no certificate matches"
keys a Escape
ok "Esc closes the audit view" gone a "Search \(serial"
keys a F4
ok "F4 asks for the export file" wait_for a "File: provstation-audit-"
keys a C-u "$TMP/export.csv" Enter
ok "the export reports its row count" wait_for a "Exported 2 rows to .*export\.csv"
[ "$(python3 -c 'import csv,sys; r=list(csv.reader(open(sys.argv[1]))); print(",".join(r[0][:4]), len(r) - 1)' "$TMP/export.csv")" = "device_serial,common_name,cert_serial,state 2" ]
check "the exported file is the audit CSV with its 2 rows"
keys a F4 C-u "$TMP/export.csv" Enter
ok "exporting over an existing file asks first" wait_for a "export\.csv exists: overwrite\? y/N"
keys a y
ok "y overwrites" wait_for a "Exported 2 rows to .*export\.csv"

# resize and quit while a job runs
keys a Up Up F6
ok "reset good1.img again" wait_for a '^. good1\.img .*WAITING FOR SERIAL'
ok "lock the audit database (jobs wait for it)" lock_db
keys a 'SN-1003' Enter
ok "the job runs" wait_for a '^. good1\.img .*SN-1003 .*PERSONALIZING'
ok "the header counts it" wait_for a 'jobs 1 running'
tm resize-window -t a -x 80 -y 24
ok "resized to 80x24 during the job: still drawn" wait_for a '^. good1\.img .*PERSONALIZING'
screen a >"$TMP/s"
[ "$(wc -l <"$TMP/s")" -le 24 ] && tail -1 "$TMP/s" | grep -q "F10" &&
	head -1 "$TMP/s" | grep -q "today: 2 PASS  1 FAIL"
check "at 80x24: header counts and the key bar fit"
tm resize-window -t a -x 120 -y 40
ok "resized to 120x40" wait_for a '^Serial .*:'
keys a F1
ok "keys still answer during the job" wait_for a "OPERATOR'S FLOW"
keys a Escape
keys a q
ok "q with a job running asks first" wait_for a '1 job running .* quit anyway\? y/N'
keys a n
ok "n: back to work" gone a 'quit anyway'
keys a F10
ok "F10 asks too" wait_for a 'quit anyway\? y/N'
keys a y
ok "y: says it waits for the running job" wait_for a 'Quitting: waiting for 1 running job to finish'
unlock_db
ok "then the process exits 0" wait_for a '^EXIT=0$' 20
export_rows | grep -q '^SN-1003,.*,verified,'
check "the job was not cut off: SN-1003 verified in the audit database"
tm kill-session -t a

# ---- 80x24, ASCII locale, monochrome (--no-color), eight slots busy at once ----
for i in 2 3 4 5 6 7 8 9; do
	cp --sparse=always "$W/staging/template.img" "$W/staging/s$i.img"
	mv "$W/staging/s$i.img" "$W/slots/s$i.img"
done
rm -f "$W/slots/x.img"
start b 80 24 C --no-color
ok "80x24, C locale: the screen comes up" wait_for b '^. s9\.img .*(SCAN SERIAL|WAITING FOR SERIAL)'
screen b >"$TMP/s"
! LC_ALL=C grep -q '[^ -~]' "$TMP/s"
check "ASCII only when the locale is not UTF-8"
grep -q "SLOT.*SERIAL.*STATE" "$TMP/s"
check "column headings at 80 columns"
! tm capture-pane -e -p -t b | grep -a -q "$(printf '\033')\[[0-9;]*[34][0-7]m"
check "--no-color: no colours at all"
ok "lock the audit database" lock_db
for i in 1 2 3 4 5 6 7 8; do
	keys b "SN-20$i" Enter
	sleep 0.1
done
ok "eight slots busy at once" wait_for b 'jobs 8 running'
keys b F1
ok "a key answers while eight slots are busy" wait_for b "OPERATOR'S FLOW" 2
keys b Escape
unlock_db
ok "all eight PASS" wait_count b '^. (good1|s[2-9])\.img .* PASS ' 8 30
tm capture-pane -e -p -t b | grep -a "PASS " | grep -a -q "$(printf '\033')\[[0-9;]*7m"
check "monochrome PASS is in reverse video"
ok "lock the audit database" lock_db
keys b 'SN-209' Enter
ok "a job on the ninth slot" wait_for b 'jobs 1 running'
station_pid=$(pgrep -P "$(tm display -p -t b '#{pane_pid}')")
kill -TERM "$station_pid"
ok "SIGTERM with a job running: says it waits for the job" \
	wait_for b 'Quitting: waiting for 1 running job'
unlock_db
ok "then the process exits 0" wait_for b '^EXIT=0$' 20
export_rows | grep -q '^SN-209,.*,verified,'
check "the job finished: SN-209 verified in the audit database"
tm kill-session -t b

# ---- NO_COLOR, a confirm key, and the CA passphrase asked before the screen starts ----
printf 'tui secret 1\n' >"$TMP/pass"
"$PS" ca init --dir "$TMP/ca2" --passphrase-file "$TMP/pass" >/dev/null
sed 's/^hotplug = false$/hotplug = false\nconfirm = true/' "$W/station.conf" >"$W/confirm.conf"
tm new-session -d -s c -x 100 -y 30 \
	"env NO_COLOR=1 LC_ALL=C.UTF-8 $PS station --config $W/confirm.conf --ca-dir $TMP/ca2; echo EXIT=\$?; sleep 600"
ok "the passphrase is asked on the plain terminal" wait_for c 'Passphrase for the CA key:'
keys c 'tui secret 1' Enter
ok "then the screen starts" wait_for c 'today: [0-9]+ PASS'
! screen c | grep -q "tui secret"
check "the passphrase was not echoed"
! tm capture-pane -e -p -t c | grep -a -q "$(printf '\033')\[[0-9;]*[34][0-7]m"
check "NO_COLOR: no colours"
keys c 'SN-3001' Enter
ok "confirm = true: the slot waits for a start" wait_for c ' WAITING FOR START '
ok "the input line says Enter starts it" wait_for c 'Enter starts .* \(SN-3001\)'
keys c Enter
ok "Enter on the empty input line starts it: PASS" wait_for c '^. [a-z0-9]+\.img .*SN-3001 .* PASS '
keys c 'SN-3002' Enter
ok "the next one waits" wait_for c 'Enter starts .* \(SN-3002\)'
keys c F5
ok "F5 starts it: PASS" wait_for c '^. [a-z0-9]+\.img .*SN-3002 .* PASS '
openssl x509 -in "$TMP/ca2/ca-cert.pem" -noout >/dev/null 2>&1 &&
	[ "$(export_field -1 device_serial)" = SN-3002 ]
check "the audit database has the confirmed jobs"
keys c q
ok "q quits at once when no job runs" wait_for c '^EXIT=0$'
tm kill-session -t c

# ---- flashing: an image-file slot with slots_flash, at 80x24 in ASCII ----
"$MKIMG" --size 512 "$W/golden.img" >/dev/null 2>"$TMP/mkimg.err" ||
	skip_all "mkmenderimg.sh failed: $(tail -1 "$TMP/mkimg.err")"
golden_sha=$(sha256sum "$W/golden.img" | cut -c1-64)
mkdir -p "$W/fslots"
sed -e "s|^slots_dir = .*|slots_dir = $W/fslots\nslots_flash = $W/golden.img|" \
	"$W/station.conf" >"$W/flash.conf"
echo placeholder >"$W/staging/dev-1.img"
mv "$W/staging/dev-1.img" "$W/fslots/dev-1.img"
tm new-session -d -s f -x 80 -y 24 \
	"env LC_ALL=C PROVSTATION_DB_BUSY_MS=60000 $PS station --config $W/flash.conf; echo EXIT=\$?; sleep 600"
ok "an image-file slot with slots_flash waits for its serial" \
	wait_for f '^. dev-1\.img .*(SCAN SERIAL|WAITING FOR SERIAL)'
ok "a reader holds the file (a lease): the flash waits for it" hold_lease "$W/fslots/dev-1.img"
keys f 'SN-4001' Enter
ok "the slot is FLASHING" wait_for f '^. dev-1\.img .*SN-4001 .*FLASHING'
ok "saying what it writes" wait_for f '^. dev-1\.img .*FLASHING +writing golden\.img'
ok "the log says it flashes golden.img" \
	wait_for f 'dev-1\.img: provisioning SN-4001, flashing golden\.img'
release_lease
ok "then the progress bar at 80 columns: percentage, MB/s, time left" \
	wait_for f '^. dev-1\.img .*(FLASHING|VERIFY IMAGE) +\[[#.]+\] +[0-9]+% +[0-9.]+ MB/s +[0-9]+:[0-9]+' 20
! LC_ALL=C grep -q '[^ -~]' "$TMP/screen"
check "the progress bar is ASCII in the C locale"
ok "the flashed slot PASSes" wait_for f '^. dev-1\.img .*SN-4001 .* PASS ' 60
ok "the log says what was flashed" wait_for f 'dev-1\.img: flashed golden\.img \(512 MiB, '
[ "$(export_field -1 device_serial)" = SN-4001 ] && [ "$(export_field -1 state)" = verified ] &&
	[ "$(export_field -1 image_name)" = golden.img ] &&
	[ "$(export_field -1 image_sha256)" = "$golden_sha" ]
check "the audit row names golden.img and its SHA-256"
cmp -s -n "$DATA_OFF" "$W/golden.img" "$W/fslots/dev-1.img" &&
	"$PS" verify --config "$W/flash.conf" --target "$W/fslots/dev-1.img" >/dev/null
check "the slot's file is the golden image, personalized (provstation verify)"
keys f q
ok "q quits" wait_for f '^EXIT=0$'
tm kill-session -t f
rm -f "$W/golden.img" "$W/fslots/dev-1.img"

# ---- flashing: a slot on a loop device (a station port) with flash ----
loop_reason=$(loop_unavailable)
if [ -z "$loop_reason" ]; then
	truncate -s 80M "$W/card"
	at_exit 'losetup -a | grep -F "($W/card" | cut -d: -f1 | while read -r l; do losetup -d "$l"; done'
	CARD=$(losetup -f --show "$W/card" 2>"$TMP/losetup.err") ||
		loop_reason="losetup: $(head -1 "$TMP/losetup.err")"
fi
if [ -z "$loop_reason" ]; then
	sed -e 's/^hotplug = false$/hotplug = true/' -e 's|^slots_dir = .*|slots_dir =|' \
		"$W/station.conf" >"$W/card.conf"
	printf '[slot card]\nports = %s\nallow_fixed = yes\nflash = %s\n' "$CARD" \
		"$W/staging/template.img" >>"$W/card.conf"
	tm new-session -d -s g -x 100 -y 30 \
		"env LC_ALL=C.UTF-8 $PS station --config $W/card.conf; echo EXIT=\$?; sleep 600"
	if wait_for g '^. card .*WAITING FOR SERIAL' 10 >"$TMP/wait"; then
		echo "ok $((tap_n = tap_n + 1)) - the loop device in slot card waits for its serial"
		keys g 'SN-4002' Enter
		ok "it is flashed, then PASSes" wait_for g '^. card .*SN-4002 .* PASS ' 60
		ok "the log says what was flashed" wait_for g 'card: flashed template\.img \(64 MiB, '
		[ "$(export_field -1 device_serial)" = SN-4002 ] &&
			[ "$(export_field -1 image_name)" = template.img ] &&
			[ "$(export_field -1 image_sha256)" = "$(sha256sum "$W/staging/template.img" | cut -c1-64)" ] &&
			[ "$(export_field -1 target)" = "$CARD" ]
		check "the audit row names the disk, template.img and its SHA-256"
		cmp -s -n "$DATA_OFF" "$W/staging/template.img" "$CARD" &&
			"$PS" verify --config "$W/card.conf" --target "$CARD" >/dev/null
		check "the disk holds the image, personalized (provstation verify)"
	elif grep -q "hotplug unavailable" "$TMP/screen"; then
		echo "ok $((tap_n = tap_n + 1)) - # SKIP loop device slot: $(grep -o 'hotplug unavailable.*' "$TMP/screen" | head -1)"
	else
		echo "not ok $((tap_n = tap_n + 1)) - the loop device in slot card waits for its serial"
		tap_failed=$((tap_failed + 1))
		sed 's/^/#   /' "$TMP/wait"
	fi
	keys g q
	wait_for g '^EXIT=0$' >/dev/null
	tm kill-session -t g
else
	echo "ok $((tap_n = tap_n + 1)) - # SKIP loop device slot: $loop_reason"
fi

done_testing
