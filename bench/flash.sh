#!/bin/bash
# flash.sh — `make bench` part 2: flashing a 2 GiB Mender image with 512 MiB of random data in
# rootfs A (about a quarter mapped) onto the same kind of target — a regular file on the
# working directory's filesystem and, as root, a loop device over a file there, and that loop
# device throttled to the bandwidth of a good SD card (blkio throttling) — with
# `dd bs=4M conv=fsync` (the whole image), `bmaptool copy` and `provstation flash`, in one run,
# the tools interleaved in every round. provstation runs four ways: its image hash cache cold
# (the whole-image SHA-256 for the audit row computed) or warm (taken from the cache), each
# with and without read-back verification. The order of the tools rotates from round to round:
# on a virtual disk a write is faster where an earlier one has already allocated the host's
# blocks, so a fixed order would favour whichever tool follows the big dd. Prints medians, the ratios, the target's raw
# sequential write and read bandwidth measured in the same run, provstation's effective
# bandwidth over the mapped bytes as a share of the raw write bandwidth, its verification rate
# against the raw read bandwidth, CPU seconds and peak RSS.
#
#   PROVSTATION=./provstation bash bench/flash.sh        (or: make bench)
#   BENCH_DIR=/mnt/ssd bash bench/flash.sh               where the image and targets live
#   BENCH_RUNS=5                                         rounds (medians; default 3)
#   BENCH_SIZE_MB=2048 BENCH_RANDOM_MB=512               the image and its random payload
#   BENCH_CARD_MBPS=100 BENCH_CARD_READ_MBPS=200         the card-like target (0: skip it)
set -eu
: "${PROVSTATION:?run through make bench, or set PROVSTATION to the binary}"
SRCDIR=${SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
RUNS=${BENCH_RUNS:-3}
SIZE_MB=${BENCH_SIZE_MB:-2048}
RANDOM_MB=${BENCH_RANDOM_MB:-512}
CARD_MBPS=${BENCH_CARD_MBPS:-100}
CARD_READ_MBPS=${BENCH_CARD_READ_MBPS:-$((CARD_MBPS * 2))}
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/ps-bench-flash.XXXXXX")
loop=
card=
card_dev=
throttle=/sys/fs/cgroup/blkio
cleanup() {
	if [ -n "$card_dev" ]; then
		echo "$card_dev 0" >"$throttle/blkio.throttle.write_bps_device" 2>/dev/null || true
		echo "$card_dev 0" >"$throttle/blkio.throttle.read_bps_device" 2>/dev/null || true
	fi
	[ -z "$card" ] || losetup -d "$card" 2>/dev/null || true
	[ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
export LC_ALL=C
# provstation's hash cache: $work/cache-cold is removed before each cold run, $work/cache-warm
# is filled once before the first round.
export XDG_CACHE_HOME="$work/cache-warm"

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
image_sha=$(sha256sum "$work/golden.img" | cut -c1-64)
# The raw bandwidth: 1 GiB (256 MiB on the slow card), or the whole image when it is smaller.
raw_of() { # raw_of MIB: set raw_count and raw_bytes
	raw_count=$((image_bytes / 4194304 < $1 / 4 ? image_bytes / 4194304 : $1 / 4))
	raw_bytes=$((raw_count * 4194304))
}
raw_of 1024
# The image's largest mapped range (offset, bytes): how fast the image itself can be read.
bsize=$(sed -n 's/.*<BlockSize> *\([0-9]*\) *<.*/\1/p' "$work/golden.bmap")
read -r big_off big_len < <(sed -n 's/.*<Range[^>]*> *\([0-9-]*\) *<\/Range>.*/\1/p' \
	"$work/golden.bmap" | awk -F- -v bs="$bsize" '{a = $1; b = (NF > 1) ? $2 : $1}
	b - a + 1 > max {max = b - a + 1; first = a} END {print first * bs, max * bs}')
sync

# one_run NAME COMMAND...: one timed run (caches dropped first); appends its microseconds to
# $work/NAME, keeps its output in $work/NAME.out
one_run() {
	local name=$1 t0 t1
	shift
	drop_caches
	t0=$(now_ns)
	"$@" >"$work/run.out" 2>&1 || { echo "FAILED: $*" >&2; cat "$work/run.out" >&2; exit 1; }
	t1=$(now_ns)
	echo $(((t1 - t0) / 1000)) >>"$work/$name"
	cp "$work/run.out" "$work/$name.out"
}

# ps_run NAME cold|warm verify|no-verify TARGET: provstation flash, timed, with /usr/bin/time
ps_run() {
	local name=$1 cache=$2 verify=$3 target=$4
	rm -rf "$work/cache-cold"
	XDG_CACHE_HOME=$work/cache-$cache one_run "$name" \
		/usr/bin/time -f 'rss_kb %M cpu %U %S' -o "$work/time" "$PROVSTATION" flash --image "$work/golden.img" --bmap "$work/golden.bmap" \
		--target "$target" --allow-unlisted --allow-fixed-disk \
		$([ "$verify" = verify ] || echo --no-verify)
	grep -q "sha256 $image_sha" "$work/run.out" ||
		{ echo "provstation reported the wrong image SHA-256" >&2; cat "$work/run.out" >&2; exit 1; }
	awk '{print $2}' "$work/time" >>"$work/rss.all"
	awk '{print $4 + $5}' "$work/time" >>"$work/$name.cpu"
	sed -n 's/.*verified yes, \([0-9.]*\) MB\/s.*/\1/p' "$work/run.out" >>"$work/$name.vrate"
	sed -n 's/.*bytes written, \([0-9.]*\) MB\/s.*/\1/p' "$work/run.out" >>"$work/$name.wrate"
}

# tool NAME TARGET: one timed run of a tool
tool() {
	case $1 in
	dd) one_run dd dd if="$work/golden.img" of="$2" bs=4M conv=fsync status=none ;;
	bmap)
		one_run bmap /usr/bin/time -f 'cpu %U %S' -o "$work/time" \
			bmaptool -q copy --bmap "$work/golden.bmap" "$work/golden.img" "$2"
		awk '{print $2 + $3}' "$work/time" >>"$work/bmap.cpu"
		;;
	cold_nv) ps_run cold_nv cold no-verify "$2" ;;
	warm_nv) ps_run warm_nv warm no-verify "$2" ;;
	cold_v) ps_run cold_v cold verify "$2" ;;
	warm_v) ps_run warm_v warm verify "$2" ;;
	esac
}
tools=(dd bmap cold_nv warm_nv cold_v warm_v)

# bench_target KIND TARGET: every tool RUNS times, interleaved, the order rotating
bench_target() {
	local kind=$1 target=$2 i k n
	for n in rawd read rawf src dd bmap cold_nv cold_v warm_nv warm_v; do
		: >"$work/$n" >"$work/$n.cpu" >"$work/$n.vrate" >"$work/$n.wrate"
	done
	: >"$work/rss.all"
	fresh() { if [ "$kind" = file ]; then rm -f "$target"; fi; }
	for i in $(seq 1 "$RUNS"); do
		printf '  round %d of %d\r' "$i" "$RUNS" >&2
		fresh
		one_run rawd dd if=/dev/zero of="$target" bs=4M count=$raw_count oflag=direct conv=fsync \
			status=none
		one_run read dd if="$target" of=/dev/null bs=4M count=$raw_count iflag=direct status=none
		fresh
		one_run rawf dd if=/dev/zero of="$target" bs=4M count=$raw_count conv=fsync status=none
		one_run src dd if="$work/golden.img" of=/dev/null bs=4M iflag=skip_bytes,count_bytes \
			skip="$big_off" count="$big_len" status=none
		for k in 0 1 2 3 4 5; do
			fresh
			tool "${tools[(k + i - 1) % 6]}" "$target"
		done
	done
	printf '%20s\r' '' >&2
}

us() { median <"$work/$1"; }
med() { median <"$work/$1"; } # of a file of numbers
mbps() { awk -v b="$1" -v u="$2" 'BEGIN {printf "%.0f", b / (u / 1e6) / 1e6}'; }
secs() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f", 100 * a / b}'; }

report() { # report LABEL
	local raw_w raw_r raw_f src bmap dd n eff
	raw_w=$(mbps "$raw_bytes" "$(us rawd)")
	raw_r=$(mbps "$raw_bytes" "$(us read)")
	raw_f=$(mbps "$raw_bytes" "$(us rawf)")
	src=$(mbps "$big_len" "$(us src)")
	bmap=$(us bmap)
	dd=$(us dd)
	printf '\n%s — median of %d rounds, page cache %s before every run:\n' "$1" "$RUNS" \
		"$([ $can_drop = yes ] && echo dropped || echo 'NOT dropped (not root)')"
	printf '  raw sequential write   %6s MB/s  (dd %d MiB of zeros, bs=4M oflag=direct conv=fsync; %s MB/s buffered + fsync)\n' \
		"$raw_w" $((raw_bytes >> 20)) "$raw_f"
	printf '  image read             %6s MB/s  (dd its largest mapped range, %d MiB, bs=4M, buffered)\n' \
		"$src" $((big_len >> 20))
	printf '  raw sequential read    %6s MB/s  (dd %d MiB of the target, bs=4M iflag=direct)\n' \
		"$raw_r" $((raw_bytes >> 20))
	printf '\n  %-44s %7s %8s %8s %9s %10s\n' "" "time" "vs bmap" "vs dd" "CPU s" "MB/s mapped"
	printf '  %-44s %6ss %8s %8s %9s %10s\n' "dd bs=4M conv=fsync (whole image)" \
		"$(secs "$dd")" "$(ratio "$bmap" "$dd")" "1.00" "-" "-"
	printf '  %-44s %6ss %8s %8s %9s %10s\n' "bmaptool copy" "$(secs "$bmap")" "1.00" \
		"$(ratio "$dd" "$bmap")" "$(med bmap.cpu)" "$(mbps "$mapped" "$bmap")"
	for n in warm_nv cold_nv warm_v cold_v; do
		printf '  %-44s %6ss %8s %8s %9s %10s\n' "provstation, $(case $n in
			warm_nv) echo "hash cache warm, --no-verify" ;;
			cold_nv) echo "hash cache cold, --no-verify" ;;
			warm_v) echo "hash cache warm, verify" ;;
			cold_v) echo "hash cache cold, verify" ;;
			esac)" "$(secs "$(us $n)")" "$(ratio "$bmap" "$(us $n)")" "$(ratio "$dd" "$(us $n)")" \
			"$(med $n.cpu)" "$(mbps "$mapped" "$(us $n)")"
	done
	printf '  ("vs bmap" and "vs dd": their time / this time, above 1 = faster than them)\n'
	eff=$(mbps "$mapped" "$(us warm_nv)")
	printf '\n  the like-for-like comparison with bmaptool is provstation warm --no-verify: both write\n'
	printf '  the mapped ranges, check each range against the bmap SHA-256 as it is read, flush, and\n'
	printf '  do not read back. provstation also gives the audit row the SHA-256 of the whole image:\n'
	printf '  warm from its cache, cold computed over all %d MiB (holes included) beside the writes.\n' \
		$((image_bytes / 1048576))
	printf '  effective bandwidth    %6s MB/s over the %d MiB mapped (warm, --no-verify, whole run)\n' \
		"$eff" $((mapped / 1048576))
	printf '                         = %s%% of the raw write bandwidth (target: 90%%); bmaptool %s%%\n' \
		"$(pct "$eff" "$raw_w")" "$(pct "$(mbps "$mapped" "$bmap")" "$raw_w")"
	if [ "$src" -lt "$raw_w" ]; then
		printf '                         = %s%% of the image read bandwidth above: here the target writes\n' \
			"$(pct "$eff" "$src")"
		printf '                           faster than the image is read, so it is not the bottleneck\n'
	fi
	printf '  write phase            %6s MB/s (first write to last flush, as provstation reports it, warm)\n' \
		"$(med warm_nv.wrate)"
	printf '  verification           %6s MB/s read back and compared (warm) = %s%% of the raw read bandwidth\n' \
		"$(med warm_v.vrate)" "$(pct "$(med warm_v.vrate)" "$raw_r")"
	printf '  provstation peak RSS   %6s MiB  (limit 64; every provstation run)\n' \
		"$(sort -n "$work/rss.all" | tail -1 | awk '{printf "%.1f", $1 / 1024}')"
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
# The warm cache: one untimed flash records the image's SHA-256.
"$PROVSTATION" flash --image "$work/golden.img" --bmap "$work/golden.bmap" \
	--target "$work/prime.img" --no-verify >/dev/null
rm -f "$work/prime.img"
grep -q " $image_sha\$" "$work/cache-warm/provstation/image-sha256" ||
	{ echo "bench/flash.sh: provstation did not record the image's SHA-256" >&2; exit 1; }
printf 'image: %d MiB, %d MiB mapped (bmap), on %s (%s); load average %s\n' \
	$((image_bytes / 1048576)) $((mapped / 1048576)) "$work" \
	"$(df -T "$work" | awk 'NR == 2 {print $2 " on " $1}')" "$(cut -d' ' -f1-3 /proc/loadavg)"
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

# A card-like target: a loop device whose bandwidth the block layer throttles (cgroup v1 blkio,
# root group), for the case the flashing station is built for: the card is the bottleneck.
card_reason=
[ "$CARD_MBPS" -gt 0 ] || card_reason="BENCH_CARD_MBPS=0"
[ -n "$card_reason" ] || [ "$(id -u)" -eq 0 ] || card_reason="needs root"
[ -n "$card_reason" ] || [ -w "$throttle/blkio.throttle.write_bps_device" ] ||
	card_reason="no cgroup v1 blkio throttling here ($throttle)"
if [ -z "$card_reason" ]; then
	truncate -s "$image_bytes" "$work/card"
	card=$(losetup -f --show --direct-io=on "$work/card" 2>/dev/null || true)
	[ -n "$card" ] || card_reason="losetup cannot attach a loop device here"
fi
if [ -z "$card_reason" ]; then
	card_dev=$(cat /sys/block/"${card#/dev/}"/dev)
	echo "$card_dev $((CARD_MBPS * 1000000))" >"$throttle/blkio.throttle.write_bps_device"
	echo "$card_dev $((CARD_READ_MBPS * 1000000))" >"$throttle/blkio.throttle.read_bps_device"
	raw_of 512
	bench_target card "$card"
	report "card-like target ($card throttled to $CARD_MBPS MB/s writing, $CARD_READ_MBPS MB/s reading)"
else
	echo; echo "card-like target: skipped ($card_reason)"
fi
printf '\nload average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
