#!/bin/sh
# preauth.sh — preauthorization through the Mender management API, against a fake server on
# loopback (tests/mender_server.py, HTTPS with a certificate from `provstation ca`) that
# checks every request against the OpenAPI specs and plays faults on cue: the server down at
# first and back later, 500 then 201, 429 with Retry-After, a timeout after the server acted,
# malformed answers, 401 with a new login, 409 with the same key and with another key (fail,
# replace with force, replace by deleting and waiting out the decommissioning), and the
# station killed with -9 in the middle of a flush. Nothing is lost or sent twice; the access
# token, the password and the login tokens appear in no output, log or database.
. "$SRCDIR/tests/lib.sh"
PATH=$PATH:/usr/sbin:/sbin
need python3 openssl sfdisk mkfs.ext4 mkfs.vfat debugfs

unset PROVSTATION_CONFIG PROVSTATION_CA_PASSPHRASE PROVSTATION_NOW PROVSTATION_DB_BUSY_MS
unset PROVSTATION_MENDER_TOKEN PROVSTATION_MENDER_PASSWORD
unset https_proxy HTTPS_PROXY http_proxy HTTP_PROXY all_proxy ALL_PROXY
export no_proxy='*' NO_PROXY='*' LC_ALL=C
export PROVSTATION_PREAUTH_BACKOFF_MS=100 PROVSTATION_PREAUTH_BACKOFF_MAX_MS=400
export PROVSTATION_PREAUTH_TIMEOUT_MS=1500
PS=$PROVSTATION
SERVER=$SRCDIR/tests/mender_server.py
# The OpenAPI specs every request is checked against (mender-server, management APIs).
# The specs live in the project's shared folder beside the repository (or MENDER_OPENAPI_DIR).
SPEC=${MENDER_OPENAPI_DIR:-$SRCDIR/../shared/mender/openapi/mender-server-HEAD}
[ -d "$SPEC" ] || SPEC=/work/shared/mender/openapi/mender-server-HEAD
[ -f "$SPEC/deviceauth/management_v2.yaml" ] && [ -f "$SPEC/useradm/management_v1.yaml" ] ||
	skip_all "the Mender OpenAPI specs are not in $SPEC (set MENDER_OPENAPI_DIR)"
IDSCRIPT=$SRCDIR/scripts/mender-device-identity
DB=$TMP/audit.db
CONF=$TMP/station.conf
DEVICES=/api/management/v2/devauth/devices
TOKEN=pat-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
PASSWORD=pw-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
STATION_LOG=$TMP/station-output.log
export H_DB=$DB H_CA=$TMP/ca/ca-cert.pem

# st ARGS...: run provstation; stdout and stderr in $TMP/st.out (and kept for the leak
# check), status in $st_rc.
st() {
	"$PS" "$@" >"$TMP/st.out" 2>&1 </dev/null
	st_rc=$?
	cat "$TMP/st.out" >>"$STATION_LOG"
	return $st_rc
}
# out_has PATTERN: the last run's output matches (grep -E); says what it was otherwise.
out_has() {
	grep -q -E -e "$1" "$TMP/st.out" && return 0
	echo "#   output does not match /$1/:"
	sed 's/^/#     /' "$TMP/st.out" | head -20
	return 1
}
# expect DESC WANT-STATUS PATTERN ARGS...: provstation ARGS exits WANT-STATUS with output
# matching PATTERN.
expect() {
	e_desc=$1 e_want=$2 e_pat=$3
	shift 3
	st "$@"
	if [ "$st_rc" -ne "$e_want" ]; then
		false
		check "$e_desc"
		echo "#   exit status $st_rc, not $e_want"
		sed 's/^/#     /' "$TMP/st.out" | head -20
		return
	fi
	out_has "$e_pat" >"$TMP/why"
	e_st=$?
	[ $e_st -eq 0 ]
	check "$e_desc"
	[ $e_st -eq 0 ] || cat "$TMP/why"
}
# same DESC GOT WANT: a check of two strings, showing both when they differ.
same() {
	[ "$2" = "$3" ]
	check "$1"
	[ "$2" = "$3" ] || echo "#   got '$2', want '$3'"
}

# The test's helper: control of the fake server and queries of its state and the database.
cat >"$TMP/h.py" <<'EOF'
import base64, json, os, re, sqlite3, ssl, sys, urllib.request

def ctl(port, method, path, data=None):
    ctx = ssl.create_default_context(cafile=os.environ["H_CA"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request("https://localhost:%s%s" % (port, path), data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    with opener.open(req, timeout=10) as r:
        return json.load(r)

def der(pem):
    return base64.b64decode(re.sub(r"-----[A-Z ]+-----|\s", "", pem))

def db_key(serial):
    db = sqlite3.connect(os.environ["H_DB"])
    row = db.execute("SELECT pubkey_pem FROM certificates WHERE device_serial = ? AND state = 'verified' "
                     "ORDER BY id DESC LIMIT 1", (serial,)).fetchone()
    return row[0] if row else ""

def posts(state, serial):
    return [r for r in state["requests"] if r["method"] == "POST" and r["path"].endswith("/devices")
            and isinstance(r["body"], dict) and (r["body"].get("identity_data") or {}).get("serialnumber") == serial]

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "rules":          # PORT JSON
    ctl(args[0], "POST", "/__control/rules", {"rules": json.loads(args[1]), "replace": True})
elif cmd == "config":       # PORT JSON
    ctl(args[0], "POST", "/__control/config", json.loads(args[1]))
elif cmd == "seed":         # PORT SERIAL STATUS PEM-FILE WIDTH: prints the device id
    b = base64.b64encode(der(open(args[3]).read())).decode()
    w = int(args[4])
    pem = "-----BEGIN PUBLIC KEY-----\n" + "\n".join(b[i:i + w] for i in range(0, len(b), w)) + "\n-----END PUBLIC KEY-----\n"
    print(ctl(args[0], "POST", "/__control/devices",
              {"identity_data": {"serialnumber": args[1]}, "pubkey": pem, "status": args[2]})["id"])
elif cmd == "dbkey":        # SERIAL: the certificate's public key
    sys.stdout.write(db_key(args[0]))
elif cmd == "row":          # SERIAL: "state result device_id attempts" of its newest outbox row
    db = sqlite3.connect(os.environ["H_DB"])
    r = db.execute("SELECT state, result, device_id, attempts FROM preauth_outbox WHERE device_serial = ? "
                   "ORDER BY id DESC LIMIT 1", (args[0],)).fetchone()
    print(" ".join(str(x) if x != "" else "-" for x in r) if r else "none")
elif cmd == "dev":          # PORT SERIAL: "devices id auth-sets our-key-status"
    state = ctl(args[0], "GET", "/__control/state")
    devs = [d for d in state["devices"] if d["identity_data"].get("serialnumber") == args[1]]
    if not devs:
        print("0")
    else:
        d = devs[0]
        key = der(db_key(args[1]))
        ours = [a["status"] for a in d["auth_sets"] if der(a["pubkey"]) == key]
        print(len(devs), d["id"], len(d["auth_sets"]), ",".join(ours) or "-")
elif cmd == "states":       # SERIAL...: the state of each one's newest outbox row
    db = sqlite3.connect(os.environ["H_DB"])
    for serial in args:
        r = db.execute("SELECT state FROM preauth_outbox WHERE device_serial = ? ORDER BY id DESC LIMIT 1",
                       (serial,)).fetchone()
        print(r[0] if r else "none")
elif cmd == "exactly_once": # PORT SERIAL...: how many are one device holding only our key, as recorded
    state = ctl(args[0], "GET", "/__control/state")
    db = sqlite3.connect(os.environ["H_DB"])
    good = 0
    for serial in args[1:]:
        devs = [d for d in state["devices"] if d["identity_data"].get("serialnumber") == serial]
        row = db.execute("SELECT state, device_id FROM preauth_outbox WHERE device_serial = ? "
                         "ORDER BY id DESC LIMIT 1", (serial,)).fetchone()
        if len(devs) == 1 and row == ("done", devs[0]["id"]) and len(devs[0]["auth_sets"]) == 1 \
                and der(devs[0]["auth_sets"][0]["pubkey"]) == der(db_key(serial)) \
                and devs[0]["auth_sets"][0]["status"] == "preauthorized":
            good += 1
    print(good)
elif cmd == "posts":        # PORT SERIAL: the statuses of its preauthorization requests
    print(" ".join(str(r["status"]) for r in posts(ctl(args[0], "GET", "/__control/state"), args[1])))
elif cmd == "gap":          # PORT SERIAL: seconds between its first two requests
    p = posts(ctl(args[0], "GET", "/__control/state"), args[1])
    print("%.2f" % (p[1]["t"] - p[0]["t"]) if len(p) > 1 else "-1")
elif cmd == "requests":     # PORT: "METHOD PATH STATUS" of every request
    for r in ctl(args[0], "GET", "/__control/state")["requests"]:
        print(r["method"], r["path"], r["status"])
elif cmd == "violations":   # PORT: the spec violations; fails when there are any
    v = ctl(args[0], "GET", "/__control/state")["violations"]
    for x in v:
        print(x)
    sys.exit(1 if v else 0)
elif cmd == "tokens":       # PORT: the login tokens the server issued
    for t in ctl(args[0], "GET", "/__control/state")["issued_tokens"]:
        print(t)
elif cmd == "identity":     # PORT SERIAL: the identity_data of the device the database names
    db = sqlite3.connect(os.environ["H_DB"])
    dev_id = db.execute("SELECT device_id FROM preauth_outbox WHERE device_serial = ? AND state = 'done' "
                        "ORDER BY id DESC LIMIT 1", (args[1],)).fetchone()[0]
    devs = [d for d in ctl(args[0], "GET", "/__control/state")["devices"] if d["id"] == dev_id]
    print(json.dumps(devs[0]["identity_data"], sort_keys=True) if devs else "none")
elif cmd == "script2json":  # stdin: an identity script's key=value lines
    d = {}
    for line in sys.stdin.read().splitlines():
        k, _, v = line.partition("=")
        d[k] = v
    print(json.dumps(d, sort_keys=True))
EOF
# (The interpreter itself, not a version manager's shim: the helper runs often.)
PY=$(python3 -c 'import sys; print(sys.executable)')
h() { "$PY" "$TMP/h.py" "$@"; }

# start_server NAME PORT ARGS...: a fake server in $TMP/NAME (port 0: any), stopped at exit.
start_server() {
	s_dir=$TMP/$1 s_port=$2
	shift 2
	mkdir -p "$s_dir"
	rm -f "$s_dir/port"
	"$PY" "$SERVER" --port "$s_port" --port-file "$s_dir/port" \
		--cert "$TMP/server/server-cert.pem" --key "$TMP/server/server-private.key" \
		--log "$s_dir/requests.log" --spec "$SPEC" "$@" >>"$s_dir/stderr" 2>&1 </dev/null &
	echo $! >"$s_dir/pid"
	at_exit "kill $! 2>/dev/null; wait $! 2>/dev/null"
	s_i=0
	while [ ! -s "$s_dir/port" ] && [ $s_i -lt 100 ] && kill -0 "$(cat "$s_dir/pid")" 2>/dev/null; do
		sleep 0.1
		s_i=$((s_i + 1))
	done
	[ -s "$s_dir/port" ]
}
stop_server() {
	s_pid=$(cat "$TMP/$1/pid")
	kill "$s_pid" 2>/dev/null
	wait "$s_pid" 2>/dev/null
}

# conf PORT [LINES]: the station configuration, with [preauth] for the server on PORT.
conf() {
	cat >"$CONF" <<EOF
[station]
database = $DB
[ca]
dir = $TMP/ca
[preauth]
enabled = true
server = https://localhost:$1/
ca_bundle = $TMP/ca/ca-cert.pem
serial_file = /mender/serial
$2
EOF
}

# --- the PKI, an image, a station with provisioned devices --------------------------------------
ok "ca init" "$PS" ca init --dir "$TMP/ca" --subject "/CN=preauth test CA/O=provstation tests"
ok "ca server-cert for localhost (the fake Mender server)" \
	"$PS" ca server-cert --ca-dir "$TMP/ca" --domain localhost --ip 127.0.0.1 --out "$TMP/server"
ok "a Mender image" "$SRCDIR/scripts/mkmenderimg.sh" --size 64 "$TMP/dev.img"
printf '%s\n' "$TOKEN" >"$TMP/token"
chmod 600 "$TMP/token"
printf '%s\n' "$PASSWORD" >"$TMP/password"
chmod 600 "$TMP/password"
conf 1 "token_file = $TMP/token"
ESC_SERIAL='SN"q\1'
SERIALS="SN-DOWN SN-500 SN-429 SN-TIMEOUT SN-MAL1 SN-MAL2 SN-DROP SN-SAME SN-OTHER SN-OLD-A SN-OLD-P
SN-401 SN-LOGIN SN-BADPW K1 K2 K3 K4 K5 K6 K7 K8"
provisioned=0
for s in $SERIALS "$ESC_SERIAL"; do
	"$PS" provision --config "$CONF" --target "$TMP/dev.img" --serial "$s" >"$TMP/prov.out" 2>&1 &&
		provisioned=$((provisioned + 1))
done
n_serials=$(($(echo $SERIALS | wc -w) + 1))
same "$n_serials devices provisioned (verified certificates)" "$provisioned" "$n_serials"

# --- configuration ------------------------------------------------------------------------------
conf 1 "token_file = $TMP/token
server = http://localhost:1"
expect "[preauth] server must be https" 1 "must be an https:// URL" preauth status --config "$CONF"
conf 1 "token_file = $TMP/token
identity = {\"serialnumber\": \"fixed\"}"
expect "an identity template without {serial} or {cn} is refused" 1 \
	"neither \{serial\} nor \{cn\}" preauth status --config "$CONF"
conf 1 "token_file = $TMP/token
identity = {\"serialnumber\": {serial}}"
expect "an identity template that is not JSON once filled in is refused" 1 \
	"identity.*not valid JSON" preauth status --config "$CONF"
conf 1 "token_file = $TMP/token
serial_file = mender/serial"
expect "a relative serial_file is refused" 1 "serial_file.*absolute" preauth status --config "$CONF"
conf 1 "token_file = $TMP/token
serial_file = /mender/mender-cert-private.pem"
expect "a serial_file naming the device key is refused" 1 "a file provisioning writes" \
	preauth status --config "$CONF"
cp "$TMP/token" "$TMP/token-open"
chmod 644 "$TMP/token-open"
conf 1 "token_file = $TMP/token-open"
st preauth --serial SN-DOWN --queue-only --config "$CONF"
expect "a token file readable by others is refused" 1 "mode 0644.*chmod 600" \
	preauth flush --config "$CONF"
conf 1 "token_file = $TMP/token
enabled = false"
expect "flush with preauthorization off says so" 1 "preauthorization is off" \
	preauth flush --config "$CONF"
expect "status with preauthorization off works" 0 "preauthorization  off" \
	preauth status --config "$CONF"
expect "preauth without an action is a usage error" 2 "give status, flush or --serial" \
	preauth --config "$CONF"

# --- the server down at first, back later ------------------------------------------------------
PORT=$(free_port)
conf "$PORT" "token_file = $TMP/token"
expect "--serial SN-NOPE: a device without a verified certificate is refused" 1 \
	"SN-NOPE has no verified certificate" preauth --serial SN-NOPE --config "$CONF"
expect "--serial SN-DOWN --queue-only queues it" 0 "SN-DOWN: queued" \
	preauth --serial SN-DOWN --queue-only --config "$CONF"
expect "flush with the server down: exit 1, one remaining, why" 1 \
	"cannot reach https://localhost:$PORT.*" preauth flush --config "$CONF"
out_has "0 sent, 0 failed, 1 remaining" && out_has "^  SN-DOWN .*attempts 1"
check "... it prints what remains, with the attempts"
expect "status: offline, 1 queued after a failed attempt" 0 "state +offline" \
	preauth status --config "$CONF"
out_has "queued +1 \(1 after failed attempts"
check "... and counts it"
"$PS" preauth flush --wait 20 --config "$CONF" >"$TMP/flush-wait.out" 2>&1 </dev/null &
FLUSH_PID=$!
sleep 1
start_server A "$PORT" --token "$TOKEN"
check "the server comes up on 127.0.0.1:$PORT a second later"
wait $FLUSH_PID
flush_rc=$?
cat "$TMP/flush-wait.out" >>"$STATION_LOG"
[ $flush_rc -eq 0 ] && grep -q "^SN-DOWN: preauthorized, device " "$TMP/flush-wait.out"
check "flush --wait keeps retrying and sends it once the server is back"
[ $flush_rc -eq 0 ] || sed 's/^/#   /' "$TMP/flush-wait.out"
set -- $(h dev "$PORT" SN-DOWN)
same "the server holds one device for SN-DOWN, our key preauthorized" "$1 $3 $4" "1 1 preauthorized"
DEV_DOWN=$2
set -- $(h row SN-DOWN)
same "the audit database records it done, with the device id from Location" "$1 $2 $3" \
	"done created $DEV_DOWN"
expect "status: online afterwards" 0 "state +online" preauth status --config "$CONF"

# --- 500 then 201, 429 with Retry-After --------------------------------------------------------
h rules "$PORT" '[{"method": "POST", "path": "'$DEVICES'", "status": 500, "times": 2}]'
expect "--serial SN-500 against a 500: not sent, stays queued (exit 1)" 1 \
	"SN-500: not sent .*HTTP 500: scripted failure" preauth --serial SN-500 --config "$CONF"
grep -q "stays queued" "$TMP/st.out"
check "... and says it stays queued"
expect "flush --wait: the second 500, then 201" 0 "SN-500: preauthorized" \
	preauth flush --wait 10 --config "$CONF"
same "the server saw 500, 500, 201" "$(h posts "$PORT" SN-500)" "500 500 201"
same "SN-500 is done after 2 failed attempts" "$(h row SN-500 | cut -d' ' -f1,2,4)" "done created 2"

h rules "$PORT" '[{"method": "POST", "status": 429, "headers": {"Retry-After": "1"}, "times": 1}]'
st preauth --serial SN-429 --queue-only --config "$CONF"
expect "429 with Retry-After: 1, then sent" 0 "SN-429: preauthorized" \
	preauth flush --wait 10 --config "$CONF"
gap=$(h gap "$PORT" SN-429)
python3 -c "import sys; sys.exit(0 if float('$gap') >= 1.0 else 1)"
check "the retry came after the Retry-After second (${gap} s; the backoff alone is 0.1 s)"

# --- a timeout after the server acted; malformed answers ------------------------------------------
h rules "$PORT" '[{"method": "POST", "sleep_after": 3, "times": 1}]'
expect "the server creates the device but answers too late: timeout, stays queued" 1 \
	"SN-TIMEOUT: not sent .*did not answer in time" preauth --serial SN-TIMEOUT --config "$CONF"
expect "the retry gets 409 with our key: already preauthorized, no second device" 0 \
	"SN-TIMEOUT: already preauthorized with this key" preauth flush --wait 10 --config "$CONF"
set -- $(h dev "$PORT" SN-TIMEOUT)
same "one device, one auth set" "$1 $3 $4" "1 1 preauthorized"
same "the database names that device" "$(h row SN-TIMEOUT | cut -d' ' -f1-3)" "done existing $2"

h rules "$PORT" '[{"method": "POST", "status": 409, "body": "{not json", "times": 1}]'
expect "409 with a malformed body: retried" 1 "SN-MAL1: not sent .*not a device" \
	preauth --serial SN-MAL1 --config "$CONF"
expect "... then sent" 0 "SN-MAL1: preauthorized" preauth flush --wait 10 --config "$CONF"
h rules "$PORT" '[{"method": "POST", "no_location": true, "times": 1}]'
expect "201 without Location: retried (the device exists, but unnamed)" 1 \
	"SN-MAL2: not sent .*without a usable Location" preauth --serial SN-MAL2 --config "$CONF"
expect "... the retry learns its id from the 409" 0 "SN-MAL2: already preauthorized" \
	preauth flush --wait 10 --config "$CONF"
set -- $(h dev "$PORT" SN-MAL2)
same "one device for SN-MAL2, named in the database" "$1 $(h row SN-MAL2 | cut -d' ' -f3)" "1 $2"
h rules "$PORT" '[{"method": "POST", "drop": true, "times": 1}]'
expect "a connection closed without an answer: retried" 1 "SN-DROP: not sent" \
	preauth --serial SN-DROP --config "$CONF"
expect "... then sent" 0 "SN-DROP: preauthorized" preauth flush --wait 10 --config "$CONF"

# --- 401 with an access token -------------------------------------------------------------------
h rules "$PORT" '[{"method": "POST", "status": 401, "body": {"error": "token expired"}, "times": 1}]'
expect "401 with an access token: the server's message, the row stays queued" 1 \
	"token expired.*refuses the station's credentials" preauth --serial SN-401 --config "$CONF"
same "SN-401 is pending" "$(h row SN-401 | cut -d' ' -f1)" "pending"
expect "... sent by the next flush" 0 "SN-401: preauthorized" preauth flush --wait 5 --config "$CONF"

# --- conflicts --------------------------------------------------------------------------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null |
	openssl pkey -pubout >"$TMP/other.pub" 2>/dev/null
h dbkey SN-SAME >"$TMP/same.pub"
SEED_SAME=$(h seed "$PORT" SN-SAME accepted "$TMP/same.pub" 76)
expect "409, the device holds our key (accepted; PEM wrapped differently): success" 0 \
	"SN-SAME: already preauthorized with this key, device $SEED_SAME" \
	preauth --serial SN-SAME --config "$CONF"
same "the database names the existing device" "$(h row SN-SAME | cut -d' ' -f1-3)" \
	"done existing $SEED_SAME"

SEED_OTHER=$(h seed "$PORT" SN-OTHER accepted "$TMP/other.pub" 64)
expect "409 with another key, on_conflict = fail: FAILED naming the device" 1 \
	"SN-OTHER: FAILED: device $SEED_OTHER \(accepted\) already exists .*another public key" \
	preauth --serial SN-OTHER --config "$CONF"
expect "status lists the failure with the device" 0 "failed +1" preauth status --config "$CONF"
out_has "SN-OTHER .*device $SEED_OTHER"
check "... with the conflicting device id"
n_before=$(h posts "$PORT" SN-OTHER)
st preauth flush --config "$CONF"
same "a failed row is not sent again by flush" "$(h posts "$PORT" SN-OTHER)" "$n_before"
expect "--on-conflict replace with force (mender-server 4.0): replaced" 0 \
	"SN-OTHER: preauthorized, replacing the key of device $SEED_OTHER" \
	preauth --serial SN-OTHER --on-conflict replace --config "$CONF"
set -- $(h dev "$PORT" SN-OTHER)
same "the same device now also holds our key, preauthorized" "$1 $2 $3 $4" \
	"1 $SEED_OTHER 2 preauthorized"
same "the database names the device, not the fresh id of the 201's Location" \
	"$(h row SN-OTHER | cut -d' ' -f1-3)" "done replaced $SEED_OTHER"

# A server without "force" (before 4.0): delete the old auth set, decommission, wait.
h config "$PORT" '{"force_support": false, "decommission_delay": 0.8}'
conf "$PORT" "token_file = $TMP/token
on_conflict = replace"
SEED_OLD_A=$(h seed "$PORT" SN-OLD-A accepted "$TMP/other.pub" 64)
expect "replace without force, the old device accepted: auth set deleted, device decommissioned" 0 \
	"SN-OLD-A: preauthorized, replacing" preauth --serial SN-OLD-A --config "$CONF"
set -- $(h dev "$PORT" SN-OLD-A)
same "one device for SN-OLD-A, a new one, with only our key" "$1 $3 $4" "1 1 preauthorized"
[ "$2" != "$SEED_OLD_A" ] && [ "$(h row SN-OLD-A | cut -d' ' -f3)" = "$2" ]
check "the database names the new device"
h requests "$PORT" >"$TMP/requests"
grep -q "^DELETE $DEVICES/$SEED_OLD_A/auth/[^ ]* 204" "$TMP/requests" &&
	grep -q "^DELETE $DEVICES/$SEED_OLD_A 204" "$TMP/requests"
check "it deleted the old auth set, then decommissioned the device"
SEED_OLD_P=$(h seed "$PORT" SN-OLD-P preauthorized "$TMP/other.pub" 64)
expect "replace without force, the old device only preauthorized: deleting its auth set is enough" 0 \
	"SN-OLD-P: preauthorized, replacing" preauth --serial SN-OLD-P --config "$CONF"
h requests "$PORT" >"$TMP/requests"
! grep -q "^DELETE $DEVICES/$SEED_OLD_P " "$TMP/requests"
check "... without decommissioning"
h config "$PORT" '{"force_support": true}'
conf "$PORT" "token_file = $TMP/token"

# --- the escaping of identity values --------------------------------------------------------------
expect "a serial with a quote and a backslash" 0 "preauthorized" \
	preauth --serial "$ESC_SERIAL" --config "$CONF"
same "the server got it as the identity value, exactly" "$(h identity "$PORT" "$ESC_SERIAL")" \
	"$(python3 -c 'import json,sys; print(json.dumps({"serialnumber": sys.argv[1]}))' "$ESC_SERIAL")"

# --- the identity script the images carry ------------------------------------------------------
printf '%s\n' SN-DOWN >"$TMP/serial"
MENDER_SERIAL_FILE=$TMP/serial sh "$IDSCRIPT" >"$TMP/identity.out"
same "the identity script prints serialnumber=SN-DOWN" "$(cat "$TMP/identity.out")" \
	"serialnumber=SN-DOWN"
same "... which is the identity the station preauthorized" \
	"$(h script2json <"$TMP/identity.out")" "$(h identity "$PORT" SN-DOWN)"
printf '%s\r\n' "$ESC_SERIAL" >"$TMP/serial"
same "... also for the serial with a quote and a backslash (CRLF in the file)" \
	"$(MENDER_SERIAL_FILE=$TMP/serial sh "$IDSCRIPT" | h script2json)" \
	"$(h identity "$PORT" "$ESC_SERIAL")"
MENDER_SERIAL_FILE=$TMP/no-such-file sh "$IDSCRIPT" >"$TMP/identity.out" 2>/dev/null
[ $? -ne 0 ] && [ ! -s "$TMP/identity.out" ]
check "without the serial file it fails and prints no identity"

# --- user and password: login, a new login on 401 ----------------------------------------------------
start_server L 0 --user operator@example.com --password-file "$TMP/password"
check "a second server that takes user and password"
LPORT=$(cat "$TMP/L/port")
conf "$LPORT" "username = operator@example.com
password_file = $TMP/password"
h rules "$LPORT" '[{"method": "POST", "path": "'$DEVICES'", "expire_tokens": true, "times": 1}]'
expect "the login token expires: 401, a new login, then 201" 0 "SN-LOGIN: preauthorized" \
	preauth --serial SN-LOGIN --config "$CONF"
same "requests: login, POST (401), login, POST (201)" \
	"$(h requests "$LPORT" | awk '{print $3}' | tr '\n' ' ')" "200 401 200 201 "
printf 'wrong\n' >"$TMP/bad-password"
chmod 600 "$TMP/bad-password"
conf "$LPORT" "username = operator@example.com
password_file = $TMP/bad-password"
expect "a wrong password: the login is refused, the row stays queued" 1 \
	"login as operator@example.com refused \(HTTP 401\)" preauth --serial SN-BADPW --config "$CONF"
same "SN-BADPW is pending" "$(h row SN-BADPW | cut -d' ' -f1)" "pending"
chmod 640 "$TMP/password"
conf "$LPORT" "username = operator@example.com
password_file = $TMP/password"
expect "a password file readable by the group is refused" 1 "password_file .*mode 0640" \
	preauth flush --config "$CONF"
chmod 600 "$TMP/password"
expect "... with the right password the queue empties" 0 "SN-BADPW: preauthorized" \
	preauth flush --wait 5 --config "$CONF"

# --- the station killed with -9 during a flush ---------------------------------------------------------
conf "$PORT" "token_file = $TMP/token"
for k in K1 K2 K3 K4 K5 K6 K7 K8; do
	st preauth --serial $k --queue-only --config "$CONF"
done
h rules "$PORT" '[{"method": "POST", "path": "'$DEVICES'", "sleep_after": 0.4, "times": -1}]'
"$PS" preauth flush --config "$CONF" >"$TMP/killed.out" 2>&1 </dev/null &
KILL_PID=$!
# Kill it once the first is done (each takes 0.4 s: most are still to come).
i=0
while [ $i -lt 50 ] && ! h states K1 K2 K3 K4 K5 K6 K7 K8 | grep -q '^done$'; do
	sleep 0.2
	i=$((i + 1))
done
sleep 0.5
kill -9 $KILL_PID
wait $KILL_PID 2>/dev/null
cat "$TMP/killed.out" >>"$STATION_LOG"
h rules "$PORT" '[]'
done_before=$(h states K1 K2 K3 K4 K5 K6 K7 K8 | grep -c '^done$')
[ $done_before -ge 1 ] && [ $done_before -lt 8 ]
check "killed with -9 mid-flush: $done_before of 8 done, the rest still queued"
expect "flush again: everything is sent" 0 "0 remaining" preauth flush --wait 10 --config "$CONF"
same "each of the 8 is one device with one auth set (our key) on the server, named in the database" \
	"$(h exactly_once "$PORT" K1 K2 K3 K4 K5 K6 K7 K8)" 8

# --- nothing lost, nothing leaked, nothing off-spec -------------------------------------------------------
expect "status: nothing queued" 0 "queued +0" \
	preauth status --config "$CONF"
out_has "failed +0" && out_has "done +$provisioned"
check "every provisioned device is done"
h tokens "$LPORT" >"$TMP/jwts"
[ "$(wc -l <"$TMP/jwts")" -ge 3 ]
check "the login server issued login tokens ($(wc -l <"$TMP/jwts"))"
leaks=
for f in "$STATION_LOG" "$DB" "$DB-wal" "$TMP/A/requests.log" "$TMP/L/requests.log" \
	"$TMP/A/stderr" "$TMP/L/stderr"; do
	[ -e "$f" ] || continue
	for secret in "$TOKEN" "$PASSWORD" $(cat "$TMP/jwts"); do
		grep -a -q -F -e "$secret" "$f" && leaks="$leaks $f"
	done
done
[ -z "$leaks" ] && [ -s "$STATION_LOG" ] && [ -s "$TMP/A/requests.log" ]
check "the token, the password and the login tokens appear in no output, log or database${leaks:+ (found in$leaks)}"
h violations "$PORT" >"$TMP/violations"
check "every request to the token server matches the OpenAPI spec"
sed 's/^/#   /' "$TMP/violations" | head -10
h violations "$LPORT" >"$TMP/violations"
check "every request to the login server matches the OpenAPI spec"
sed 's/^/#   /' "$TMP/violations" | head -10
stop_server A
stop_server L
done_testing
