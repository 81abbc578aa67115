# lib.sh — shared helpers for the shell tests: TAP output, a private temporary directory that
# is removed on exit, and skipping with a reason when something the test needs is absent.
# Source it from a test: . "$SRCDIR/tests/lib.sh"
set -u
: "${PROVSTATION:?run through make check, or set PROVSTATION to the binary}"
: "${SRCDIR:=$(cd "$(dirname "$0")/.." && pwd)}"

tap_n=0
tap_failed=0
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ps-test.XXXXXX")
# provstation flash keeps its image hash cache in $XDG_CACHE_HOME: the test's, not the user's.
XDG_CACHE_HOME=$TMP/cache
export XDG_CACHE_HOME
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

# nginx_mtls_start EXTRA RESPONSE: start nginx on 127.0.0.1:$PORT (in the foreground of a
# background job, stopped at exit) serving TLS with $TMP/server/server-cert.pem and its key,
# requiring a client certificate from $TMP/ca/ca-cert.pem, with EXTRA server directives
# (e.g. "ssl_crl ...;") and answering every request with RESPONSE (nginx variables allowed).
# Reports whether nginx accepts the configuration and answers; bails out when it does not.
# Sets NGINX_PID; the logs are in $TMP/nginx/.
nginx_mtls_start() {
	# As root, the workers would switch to nobody, who cannot enter $TMP (0700): keep them
	# root. As anyone else nginx keeps the current user, and a user directive only earns a
	# warning.
	nm_user=
	[ "$(id -u)" -eq 0 ] && nm_user='user root;'
	mkdir -p "$TMP/nginx"
	cat >"$TMP/nginx.conf" <<NGINX
$nm_user
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
lock_file $TMP/nginx/nginx.lock;
error_log $TMP/nginx/error.log info;
events {
	worker_connections 64;
}
http {
	access_log $TMP/nginx/access.log;
	client_body_temp_path $TMP/nginx/body;
	proxy_temp_path $TMP/nginx/proxy;
	fastcgi_temp_path $TMP/nginx/fastcgi;
	uwsgi_temp_path $TMP/nginx/uwsgi;
	scgi_temp_path $TMP/nginx/scgi;
	server {
		listen 127.0.0.1:$PORT ssl;
		server_name localhost;
		ssl_certificate $TMP/server/server-cert.pem;
		ssl_certificate_key $TMP/server/server-private.key;
		ssl_client_certificate $TMP/ca/ca-cert.pem;
		ssl_verify_client on;
		ssl_verify_depth 1;
		$1
		location / {
			default_type text/plain;
			return 200 "$2\n";
		}
	}
}
NGINX
	ok "nginx accepts the configuration${1:+ ($1)}" \
		nginx -t -q -c "$TMP/nginx.conf" -p "$TMP/nginx/" -e "$TMP/nginx/error.log"
	nginx -c "$TMP/nginx.conf" -p "$TMP/nginx/" -e "$TMP/nginx/error.log" \
		>"$TMP/nginx/stdout" 2>&1 </dev/null &
	NGINX_PID=$!
	at_exit "kill $NGINX_PID 2>/dev/null; wait $NGINX_PID 2>/dev/null"

	nm_up=no
	nm_i=0
	while [ $nm_i -lt 100 ]; do
		kill -0 "$NGINX_PID" 2>/dev/null || break
		nm_code=$(curl -sk --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' \
			"https://127.0.0.1:$PORT/" 2>/dev/null </dev/null)
		[ "$nm_code" != 000 ] && nm_up=yes && break
		sleep 0.1
		nm_i=$((nm_i + 1))
	done
	[ $nm_up = yes ]
	check "nginx answers on 127.0.0.1:$PORT"
	if [ $nm_up != yes ]; then
		sed 's/^/#   nginx: /' "$TMP/nginx/stdout" "$TMP/nginx/error.log" 2>/dev/null |
			tail -20
		echo "Bail out! nginx did not start"
		exit 1
	fi
	[ "$(cat "$TMP/nginx/nginx.pid" 2>/dev/null)" = "$NGINX_PID" ]
	check "the nginx master is the process started here (PID $NGINX_PID)"
}

# Loop devices. Call loop_setup once, at the top level (not in a subshell), before the first
# loop_attach: at exit it detaches every loop device still backed by a file under $TMP, found
# by its backing file, never by a device name, which another test may have been given since
# this one let it go. loop_attach [losetup options] FILE prints the new device (its errors
# in $TMP/losetup.err).
loop_setup() {
	at_exit 'losetup -a 2>/dev/null | grep -F "($TMP/" | cut -d: -f1 |
		while read -r l; do losetup -d "$l"; done'
}
loop_attach() { losetup -f --show "$@" 2>"$TMP/losetup.err"; }
# loop_unavailable: why this test cannot use loop devices here, or nothing when it can.
loop_unavailable() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "loop devices need root"
	elif ! command -v losetup >/dev/null; then
		echo "losetup is not installed"
	elif [ ! -e /dev/loop-control ]; then
		echo "no loop devices here (/dev/loop-control missing)"
	fi
}
