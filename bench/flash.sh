#!/bin/bash
# flash.sh — `make bench` part 2: flashing a 2 GiB Mender image with 512 MiB of random data in
# rootfs A (about a quarter mapped) onto the same kind of target — a regular file on the
# working directory's filesystem and, as root, a loop device over a file there — with
# `dd bs=4M conv=fsync` (the whole image), `bmaptool copy` and `provstation flash`, in one run.
# Prints each time, the ratios, the target's raw sequential write and read bandwidth measured
# in the same run, the effective bandwidth over the mapped bytes, and provstation's peak RSS.
#
#   PROVSTATION=./provstation bash bench/flash.sh        (or: make bench)
#   BENCH_DIR=/mnt/ssd bash bench/flash.sh               where the image and targets live
#   BENCH_RUNS=3                                         runs per tool (median)
set -eu
: "${PROVSTATION:?run through make bench, or set PROVSTATION to the binary}"
SRCDIR=${SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
RUNS=${BENCH_RUNS:-3}
SIZE_MB=${BENCH_SIZE_MB:-2048}
RANDOM_MB=${BENCH_RANDOM_MB:-512}
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/ps-bench-flash.XXXXXX")
loop=
cleanup() {
	[ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
export LC_ALL=C

for c in bmaptool dd /usr/bin/time; do
	command -v "$c" >/dev/null || { echo "bench/flash.sh: $c is not installed" >&2; exit 1; }
done

can_drop=no
if [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/vm/drop_caches ]; then can_drop=yes; fi
drop_caches() {
	sync
	if [ $can_drop = yes ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}
now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# ---- the image
echo "building a ${SIZE_MB} MiB Mender image with ${RANDOM_MB} MiB of random data in rootfs A..."
"$SRCDIR/scripts/mkmenderimg.sh" --size "$SIZE_MB" "$work/golden.img" >"$work/parts"
read -r a_off a_size < <(awk '$6 == "rootfsA" {print $2, $3}' "$work/parts")
seek_mb=$(((a_off + (a_size - RANDOM_MB * 1048576) / 2) / 1048576))
dd if=/dev/urandom of="$work/golden.img" bs=1M count="$RANDOM_MB" seek="$seek_mb" \
	conv=notrunc status=none
bmaptool create -o "$work/golden.bmap" "$work/golden.img" 2>/dev/null
image_bytes=$(stat -c %s "$work/golden.img")
mapped=$(awk -F'[<>]' '/<MappedBlocksCount>/ {m=$3} /<BlockSize>/ {b=$3} END {print m * b}' \
	"$work/golden.bmap")
sync

# one_run LABEL TARGET COMMAND...: time one run (caches dropped first); prints microseconds
one_run() {
	local target=$2 t0 t1
	shift 2
	drop_caches
	t0=$(now_ns)
	"$@" >"$work/run.out" 2>&1 || { echo "FAILED: $*" >&2; cat "$work/run.out" >&2; exit 1; }
	t1=$(now_ns)
	echo $(((t1 - t0) / 1000))
}

# bench TARGET_KIND TARGET: every tool RUNS times; sets us_* and figures
bench_target() {
	local kind=$1 target=$2 i
	: >"$work/dd" >"$work/bmap" >"$work/ps" >"$work/psnv" >"$work/rawd" >"$work/rawf" >"$work/read"
	: >"$work/rss.all" >"$work/cpu.bmap.all" >"$work/wrate.all"
	for i in $(seq 1 "$RUNS"); do
		fresh() { [ "$kind" = file ] && rm -f "$target"; true; }
		fresh
		one_run raw-direct "$target" dd if=/dev/zero of="$target" bs=4M count=256 \
			oflag=direct status=none >>"$work/rawd"
		one_run read "$target" dd if="$target" of=/dev/null bs=4M count=256 iflag=direct \
			status=none >>"$work/read"
		fresh
		one_run raw-fsync "$target" dd if=/dev/zero of="$target" bs=4M count=256 \
			conv=fsync status=none >>"$work/rawf"
		fresh
		one_run dd "$target" dd if="$work/golden.img" of="$target" bs=4M conv=fsync \
			status=none >>"$work/dd"
		fresh
		one_run bmaptool "$target" /usr/bin/time -f 'cpu %U %S' -o "$work/cpu.bmap" \
			bmaptool -q copy --bmap "$work/golden.bmap" "$work/golden.img" "$target" \
			>>"$work/bmap"
		cat "$work/cpu.bmap" >>"$work/cpu.bmap.all"
		fresh
		one_run provstation "$target" /usr/bin/time -f 'rss_kb %M cpu %U %S' -o "$work/rss" \
			"$PROVSTATION" flash --image "$work/golden.img" --bmap "$work/golden.bmap" \
			--target "$target" --allow-unlisted --allow-fixed-disk --no-verify >>"$work/psnv"
		cat "$work/rss" >>"$work/rss.all"
		grep -o 'written, [0-9.]* MB/s' "$work/run.out" >>"$work/wrate.all" || true
		fresh
		one_run provstation "$target" /usr/bin/time -f 'rss_kb %M cpu %U %S' -o "$work/rss" \
			"$PROVSTATION" flash --image "$work/golden.img" --bmap "$work/golden.bmap" \
			--target "$target" --allow-unlisted --allow-fixed-disk >>"$work/ps"
		cp "$work/run.out" "$work/ps.out"
		cat "$work/rss" >>"$work/rss.all"
	done
	us_rawd=$(median <"$work/rawd")
	us_rawf=$(median <"$work/rawf")
	us_read=$(median <"$work/read")
	us_dd=$(median <"$work/dd")
	us_bmap=$(median <"$work/bmap")
	us_ps=$(median <"$work/ps")
	us_psnv=$(median <"$work/psnv")
	rss_kb=$(awk '/rss_kb/ {if ($2 > m) m = $2} END {print m}' "$work/rss.all")
	# CPU seconds (user + system): median over the runs without verification
	cpu_ps=$(awk '/rss_kb/ && NR % 2 == 1 {print $4 + $5}' "$work/rss.all" | median)
	cpu_bmap=$(awk '{print $2 + $3}' "$work/cpu.bmap.all" | median)
	wrate=$(awk '{print $2}' "$work/wrate.all" | median)
}

mbps() { echo "$1 $2" | awk '{printf "%.0f", $1 / ($2 / 1e6) / 1e6}'; }
secs() { echo "$1" | awk '{printf "%.2f", $1 / 1e6}'; }
ratio() { echo "$1 $2" | awk '{printf "%.1f", $1 / $2}'; }
pct() { echo "$1 $2" | awk '{printf "%.0f", 100 * $1 / $2}'; }

report() { # report LABEL
	local raw_mbps eff_mbps verify_line
	raw_mbps=$(mbps 1073741824 "$us_rawd")
	eff_mbps=$(mbps "$mapped" "$us_psnv")
	verify_line=$(grep -o 'verified yes, [0-9.]* MB/s' "$work/ps.out" || echo "verified ?")
	printf '\n%s (median of %d runs, page cache %s between runs):\n' "$1" "$RUNS" \
		"$([ $can_drop = yes ] && echo dropped || echo 'NOT dropped (not root)')"
	printf '  raw write bandwidth      %6s MB/s (dd 1 GiB of zeros, oflag=direct); %s MB/s with conv=fsync\n' \
		"$raw_mbps" "$(mbps 1073741824 "$us_rawf")"
	printf '  raw read bandwidth       %6s MB/s (dd 1 GiB, iflag=direct)\n' \
		"$(mbps 1073741824 "$us_read")"
	printf '  dd bs=4M conv=fsync      %6s s    (whole %d MiB image)\n' "$(secs "$us_dd")" \
		$((image_bytes / 1048576))
	printf '  bmaptool copy            %6s s\n' "$(secs "$us_bmap")"
	printf '  provstation --no-verify  %6s s    %s MB/s over the %d MiB mapped = %s%% of raw\n' \
		"$(secs "$us_psnv")" "$eff_mbps" $((mapped / 1048576)) "$(pct "$eff_mbps" "$raw_mbps")"
	printf '  provstation (verify)     %6s s    %s\n' "$(secs "$us_ps")" "$verify_line"
	printf '  ratios                   dd / provstation %sx, bmaptool / provstation %sx (no verify); %sx, %sx (verify)\n' \
		"$(ratio "$us_dd" "$us_psnv")" "$(ratio "$us_bmap" "$us_psnv")" \
		"$(ratio "$us_dd" "$us_ps")" "$(ratio "$us_bmap" "$us_ps")"
	printf '  provstation write path   %6s MB/s (first write to last flush, as it reports it; the\n' \
		"$wrate"
	printf '                                      SHA-256 of the whole image runs beside it)\n'
	printf '  CPU seconds (no verify)  provstation %s s, bmaptool %s s (provstation hashes all %d MiB\n' \
		"$cpu_ps" "$cpu_bmap" $((image_bytes / 1048576))
	printf '                           of the image for the audit; bmaptool only the mapped ranges)\n'
	printf '  provstation peak RSS     %6s MiB  (limit 64)\n' "$(echo "$rss_kb" | awk '{printf "%.1f", $1 / 1024}')"
}

# Is the machine busy? One thread hashing 1 GiB of zeros: wall time against CPU time.
if command -v python3 >/dev/null; then
	python3 -c '
import hashlib, time
b = bytes(1 << 20); h = hashlib.sha256(); w = time.time(); c = time.process_time()
for i in range(1024): h.update(b)
w = time.time() - w; c = time.process_time() - c
print("cpu check: SHA-256 of 1 GiB in one thread: %.2f s wall for %.2f s CPU%s" % (w, c,
      "" if w < 1.3 * c else " -- the machine is busy: CPU-bound work runs %.1fx slower" % (w / c)))'
fi
printf 'image: %d MiB, %d MiB mapped (bmap), on %s (%s)\n' $((image_bytes / 1048576)) \
	$((mapped / 1048576)) "$work" "$(df -T "$work" | awk 'NR == 2 {print $2 " on " $1}')"
bench_target file "$work/target.img"
report "regular file target"

if [ "$(id -u)" -eq 0 ] && command -v losetup >/dev/null && [ -e /dev/loop-control ]; then
	truncate -s "$image_bytes" "$work/disk"
	loop=$(losetup -f --show --direct-io=on "$work/disk" 2>/dev/null ||
		losetup -f --show "$work/disk" 2>/dev/null || true)
	if [ -n "$loop" ]; then
		bench_target loop "$loop"
		report "loop device target ($loop over a file on the same filesystem, direct I/O $(
			cat /sys/block/"${loop#/dev/}"/loop/dio 2>/dev/null || echo ?))"
	else
		echo; echo "loop device target: skipped (losetup cannot attach a loop device here)"
	fi
else
	echo; echo "loop device target: skipped (needs root and loop devices)"
fi
