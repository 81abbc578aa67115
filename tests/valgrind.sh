#!/bin/sh
# valgrind.sh — valgrind memcheck over the C unit tests (the check programs tests/test_*):
# no invalid access, no use of uninitialized memory, no definite leak, in the test and in
# every child it forks (test_faults provisions in forked children). One TAP line per test
# with valgrind's error count and definite/indirect leak bytes. Suppressions: none needed
# (tests/valgrind.supp is passed when present, for documented library noise only).
# The verdict is valgrind's: errors, definite leaks, death by a signal. A test's own failures
# under valgrind are shown but do not count (timing assertions cannot hold at valgrind's
# speed; `make check` runs every test natively anyway).
# In `make check` it stays near a minute: the tests in VALGRIND_SLOW (test_ca: RSA key
# generation, 90 s; test_faults: hundreds of provisionings; test_preauth: waits on timers)
# are left to `make valgrind` (VALGRIND_FULL=1), which runs everything, test_faults with
# three in-process fault kinds at every 20th N.
. "$SRCDIR/tests/lib.sh"
: "${BUILDDIR:=$(pwd)}"
need valgrind make
mkvar() {
	printf 'ps-print-%%:\n\t@echo $($*)\n' |
		env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory -C "$BUILDDIR" \
			-f Makefile -f - "ps-print-$1" | grep -v '^make'
}
[ -z "$(mkvar PS_SAN_CFLAGS)" ] ||
	skip_all "built with sanitizers (--enable-sanitizers): valgrind cannot run ASan binaries"
programs=$(mkvar check_PROGRAMS)
[ -n "$programs" ] || skip_all "no check programs in $BUILDDIR/Makefile"
supp=""
[ -f "$SRCDIR/tests/valgrind.supp" ] && supp="--suppressions=$SRCDIR/tests/valgrind.supp"

for prog in $programs; do
	name=$(basename "$prog")
	if [ ! -x "$BUILDDIR/$prog" ]; then
		echo "ok $((tap_n = tap_n + 1)) - $name # SKIP not built"
		continue
	fi
	env=""
	case " ${VALGRIND_SLOW:-test_ca test_faults test_preauth} " in
	*" $name "*)
		if [ -z "${VALGRIND_FULL:-}" ]; then
			echo "ok $((tap_n = tap_n + 1)) - $name # SKIP slow under valgrind: make valgrind runs it"
			continue
		fi
		;;
	esac
	# under valgrind, only faults the process survives: an _exit leaves memory behind
	[ "$name" = test_faults ] &&
		env="PS_FAULTS_KINDS=write-eio,write-enospc,read-eio PS_FAULTS_STRIDE=20"
	rm -f "$TMP"/vg.*
	start=$(date +%s)
	# shellcheck disable=SC2086
	env $env valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
		--track-origins=yes --log-file="$TMP/vg.%p" $supp "$BUILDDIR/$prog" >"$TMP/out" 2>&1
	status=$?
	errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$TMP"/vg.* | awk '{s += $1} END {print s + 0}')
	definite=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$TMP"/vg.* | tr -d , | awk '{s += $1} END {print s + 0}')
	indirect=$(sed -n 's/.*indirectly lost: \([0-9,]*\) bytes.*/\1/p' "$TMP"/vg.* | tr -d , | awk '{s += $1} END {print s + 0}')
	procs=$(ls "$TMP"/vg.* | wc -l)
	tap_n=$((tap_n + 1))
	desc="$name under valgrind: $errors errors, $definite bytes definitely and $indirect indirectly lost ($procs processes, $(($(date +%s) - start))s${env:+, $env})"
	if [ "$status" -lt 128 ] && [ "$status" -ne 99 ] && [ "$errors" -eq 0 ] &&
		[ "$definite" -eq 0 ]; then
		echo "ok $tap_n - $desc"
		[ "$status" -eq 0 ] || grep '^not ok' "$TMP/out" | grep -v '# TODO' | head -5 |
			sed 's/^/#   under valgrind the test itself reported: /'
	else
		tap_failed=$((tap_failed + 1))
		echo "not ok $tap_n - $desc (exit status $status)"
		grep -h -E '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|[0-9,]+ bytes in .* definitely|   (at|by) 0x)' \
			"$TMP"/vg.* | head -40 | sed 's/^/#   /'
		grep '^not ok' "$TMP/out" | head -5 | sed 's/^/#   /'
	fi
done
done_testing
