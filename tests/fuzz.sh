#!/bin/sh
# fuzz.sh — builds the libFuzzer targets in fuzz/ with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer against the core library's sources (the list in Makefile.am, so
# new sources are picked up), and runs each for FUZZ_SECONDS (default 3) over its seeds in
# fuzz/corpus/<name>/ plus, for the image target, the first MiB of a generated Mender image.
# One TAP line per target with libFuzzer's count of executions. A crash fails the line and
# leaves the input in $BUILDDIR/fuzz/build/artifacts/<name>/. Targets whose source says
# "#define PENDING 1" are placeholders and are skipped with the reason. FUZZ_TARGETS="image
# config" runs only those.
# `make check` runs it for 3 seconds per target, `make fuzz` for FUZZ_SECONDS (default 60).
. "$SRCDIR/tests/lib.sh"
: "${BUILDDIR:=$(pwd)}"
FUZZ_SECONDS=${FUZZ_SECONDS:-3}
CLANG=${CLANG:-clang}
need make pkg-config
command -v "$CLANG" >/dev/null 2>&1 ||
	skip_all "clang is not installed (apt-get install clang libclang-rt-14-dev)"

BUILD=$BUILDDIR/fuzz/build
mkdir -p "$BUILD/obj" "$BUILD/corpus" "$BUILD/artifacts" || skip_all "cannot create $BUILD"
# One run at a time per build directory (make check and make fuzz may overlap).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$BUILD/lock"
	flock 9
fi

# libFuzzer's runtime is a separate package on Debian (libclang-rt-14-dev).
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return d && n > 1 && d[0] == 1; }' \
	>"$TMP/probe.c"
"$CLANG" -fsanitize=fuzzer,address,undefined "$TMP/probe.c" -o "$TMP/probe" 2>"$TMP/probe.err" ||
	skip_all "clang cannot link libFuzzer ($(head -1 "$TMP/probe.err"); apt-get install libclang-rt-14-dev)"

# The build's own flags and the library's source list, as make expands them.
mkvar() {
	printf 'ps-print-%%:\n\t@echo $($*)\n' |
		env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory -C "$BUILDDIR" \
			-f Makefile -f - "ps-print-$1" | grep -v '^make'
}
CORE_LIBS=$(mkvar CORE_LIBS)
SOURCES=$(mkvar libprovstation_a_SOURCES | tr ' ' '\n' | grep '\.c$')
[ -n "$SOURCES" ] || skip_all "cannot read the library's sources from $BUILDDIR/Makefile"
# Compiler flags go through a response file (one argument a line, quotes escaped), so that
# -DPKGDATADIR="..." keeps its quotes. Of configure's DEFS only the plain ones are needed.
{
	echo "-std=c11 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined" \
		"-fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link" | tr ' ' '\n'
	echo '-DPACKAGE_VERSION="fuzz"'
	mkvar DEFS | tr ' ' '\n' | grep -E '^-D[A-Za-z0-9_]+(=[A-Za-z0-9_.]*)?$' |
		grep -v '^-DPACKAGE_VERSION='
	mkvar AM_CPPFLAGS | tr ' ' '\n'
	mkvar CORE_CFLAGS | tr ' ' '\n'
} | grep -v '^$' | sed 's/"/\\"/g' >"$BUILD/cflags.rsp"

[ -f "$BUILD/cflags.used" ] && cmp -s "$BUILD/cflags.rsp" "$BUILD/cflags.used" ||
	rm -f "$BUILD"/obj/*.o
cp "$BUILD/cflags.rsp" "$BUILD/cflags.used"

# Compile the library once per change: an object is rebuilt when its source or any header is
# newer. Two at a time.
newest_header=$(cd "$SRCDIR" && ls -t src/*.h db/*.h udev/*.h 2>/dev/null | head -1)
for s in $SOURCES; do
	o=$BUILD/obj/$(echo "$s" | tr / _ | sed 's/\.c$/.o/')
	if [ ! -f "$o" ] || [ "$SRCDIR/$s" -nt "$o" ] || [ "$SRCDIR/$newest_header" -nt "$o" ]; then
		echo "$s $o"
	fi
done >"$TMP/todo"
export CLANG BUILD SRCDIR TMP
xargs -r -P 2 -L 1 sh -c 'cd "$SRCDIR" && "$CLANG" @"$BUILD/cflags.rsp" -c "$0" -o "$1" \
	2>>"$TMP/compile.err" || { rm -f "$1"; exit 1; }' <"$TMP/todo"
objs=""
for s in $SOURCES; do
	o=$BUILD/obj/$(echo "$s" | tr / _ | sed 's/\.c$/.o/')
	[ -f "$o" ] || {
		echo "1..0 # SKIP the library does not build with clang here: $(grep -m1 error "$TMP/compile.err")"
		exit 0
	}
	objs="$objs $o"
done
rm -f "$BUILD/libps-fuzz.a"
# shellcheck disable=SC2086
ar rcs "$BUILD/libps-fuzz.a" $objs

# Seeds made at run time: the first MiB of a generated image (partition table, boot sector).
if [ ! -f "$BUILD/generated-seeds/first-mib.img" ] &&
	"$SRCDIR/scripts/mkmenderimg.sh" --size 64 "$TMP/gen.img" >/dev/null 2>&1; then
	mkdir -p "$BUILD/generated-seeds"
	head -c 1048576 "$TMP/gen.img" >"$BUILD/generated-seeds/first-mib.img"
	"$SRCDIR/scripts/mkmenderimg.sh" --size 64 --table gpt --boot no "$TMP/gen.img" >/dev/null 2>&1 &&
		head -c 1048576 "$TMP/gen.img" >"$BUILD/generated-seeds/first-mib-gpt.img"
	rm -f "$TMP/gen.img"
fi

run_target() { # run_target NAME MAX_LEN
	name=$1 max_len=$2
	case " ${FUZZ_TARGETS:-$name} " in *" $name "*) ;; *) return ;; esac
	src=$SRCDIR/fuzz/fuzz_$name.c
	if grep -q '^#define PENDING 1' "$src"; then
		echo "ok $((tap_n = tap_n + 1)) - fuzz_$name # SKIP placeholder: the parser is not written yet ($src)"
		return
	fi
	bin=$BUILD/fuzz_$name
	# shellcheck disable=SC2086
	if ! "$CLANG" @"$BUILD/cflags.rsp" -fsanitize=fuzzer "$src" "$BUILD/libps-fuzz.a" \
		$CORE_LIBS -o "$bin" 2>"$TMP/link.err"; then
		tap_n=$((tap_n + 1))
		tap_failed=$((tap_failed + 1))
		echo "not ok $tap_n - fuzz_$name builds"
		sed 's/^/#   /' "$TMP/link.err" | head -20
		return
	fi
	corpus=$BUILD/corpus/$name
	artifacts=$BUILD/artifacts/$name/
	mkdir -p "$corpus" "$artifacts"
	seeds="$SRCDIR/fuzz/corpus/$name"
	[ "$name" = image ] && [ -d "$BUILD/generated-seeds" ] && seeds="$seeds $BUILD/generated-seeds"
	start=$(date +%s)
	# shellcheck disable=SC2086
	"$bin" "$corpus" $seeds -max_total_time="$FUZZ_SECONDS" -max_len="$max_len" -timeout=20 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts" \
		>"$TMP/$name.log" 2>&1
	status=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$TMP/$name.log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$TMP/$name.log" | tail -1)
	tap_n=$((tap_n + 1))
	if [ $status -eq 0 ]; then
		echo "ok $tap_n - fuzz_$name: ${execs:-?} executions in $(($(date +%s) - start))s, $cov, corpus $(ls "$corpus" | wc -l) inputs, no crash"
	else
		tap_failed=$((tap_failed + 1))
		echo "not ok $tap_n - fuzz_$name: libFuzzer exit status $status after ${execs:-?} executions (input kept in $artifacts)"
		grep -E 'ERROR|SUMMARY|runtime error|#[0-9]+ 0x|Test unit written' "$TMP/$name.log" |
			head -30 | sed 's/^/#   /'
	fi
}

run_target menderconf 65536
run_target config 65536
run_target template 4096
run_target image 1048576
run_target bmap 1048576
run_target mgmt_api 1048576
done_testing
