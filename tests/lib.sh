# lib.sh — shared helpers for the shell tests: TAP output, a private temporary directory that
# is removed on exit, and skipping with a reason when something the test needs is absent.
# Source it from a test: . "$SRCDIR/tests/lib.sh"
set -u
: "${PROVSTATION:?run through make check, or set PROVSTATION to the binary}"
: "${SRCDIR:=$(cd "$(dirname "$0")/.." && pwd)}"

tap_n=0
tap_failed=0
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ps-test.XXXXXX")
cleanup_hooks=""
at_exit() { cleanup_hooks="$1; $cleanup_hooks"; }
_finish() {
	eval "$cleanup_hooks" 2>/dev/null || true
	rm -rf "$TMP"
}
trap _finish EXIT
trap 'exit 130' INT TERM

ok() { # ok DESCRIPTION COMMAND...: run the command, report its success
	desc=$1
	shift
	tap_n=$((tap_n + 1))
	if "$@" >"$TMP/.out" 2>&1; then
		echo "ok $tap_n - $desc"
	else
		echo "not ok $tap_n - $desc"
		tap_failed=$((tap_failed + 1))
		sed 's/^/#   /' "$TMP/.out" | head -40
	fi
}

fails() { # fails DESCRIPTION COMMAND...: the command must fail (non-zero exit)
	desc=$1
	shift
	tap_n=$((tap_n + 1))
	if "$@" >"$TMP/.out" 2>&1; then
		echo "not ok $tap_n - $desc (it succeeded)"
		tap_failed=$((tap_failed + 1))
		sed 's/^/#   /' "$TMP/.out" | head -20
	else
		echo "ok $tap_n - $desc"
	fi
}

check() { # check DESCRIPTION: report the status of the previous shell test ([ ... ]) as a test
	st=$?
	tap_n=$((tap_n + 1))
	if [ $st -eq 0 ]; then
		echo "ok $tap_n - $1"
	else
		echo "not ok $tap_n - $1"
		tap_failed=$((tap_failed + 1))
	fi
}

skip_all() { # skip_all REASON: the whole test needs something absent
	echo "1..0 # SKIP $1"
	exit 0
}

need() { # need COMMAND...: skip the test when a command is missing
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || skip_all "$c is not installed"
	done
}

done_testing() {
	echo "1..$tap_n"
	[ $tap_failed -eq 0 ]
}

free_port() { # a free TCP port on loopback
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
