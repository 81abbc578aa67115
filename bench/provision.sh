#!/bin/bash
# provision.sh — `make bench` part 1: provstation provision per device on a 1 GiB and a 16 GiB
# (sparse) Mender image, against the seed procedure (openssl by hand, mender-artifact install
# and cp, a JSON edit) on the same 1 GiB image, measured in one run. Prints times and ratios.
set -eu
: "${PROVSTATION:?run through make bench}"
SRCDIR=${SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
RUNS=${BENCH_RUNS:-30}
work=$(mktemp -d "${TMPDIR:-/tmp}/ps-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
mk="$SRCDIR/scripts/mkmenderimg.sh"

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

"$PROVSTATION" ca init --dir "$work/ca" >/dev/null
cat >"$work/station.conf" <<CONF
[station]
id = bench
database = $work/audit.db
[ca]
dir = $work/ca
[device]
common_name = {serial}.devices.example.com
subject = /O=My Organization/OU=My Unit/C=NO/L=Oslo/emailAddress=me@example.com
CONF

# mender-artifact needs exactly four partitions and a populated rootfs B.
"$mk" --size 1024 --rootfs-b full "$work/1g.img" >/dev/null
"$mk" --size 16384 --rootfs-b empty "$work/16g.img" >/dev/null
cp --sparse=always "$work/1g.img" "$work/seed.img"

bench_provstation() { # IMAGE LABEL
	: >"$work/times"
	for i in $(seq 1 "$RUNS"); do
		t0=$(now_ns)
		"$PROVSTATION" provision --config "$work/station.conf" --target "$1" \
			--serial "SN-$2-$i" >/dev/null
		t1=$(now_ns)
		echo $(((t1 - t0) / 1000)) >>"$work/times"
	done
	median <"$work/times"
}

us_1g=$(bench_provstation "$work/1g.img" 1g)
us_16g=$(bench_provstation "$work/16g.img" 16g)

# The seed procedure, once, as the documents give it.
seed_us=
if command -v mender-artifact >/dev/null && command -v openssl >/dev/null; then
	cd "$work"
	cp ca/ca-cert.pem ca/ca-private.key .
	cat >device-cert.conf <<CONF
[req]
distinguished_name = req_distinguished_name
prompt = no

[req_distinguished_name]
commonName=SN-SEED.devices.example.com
organizationName=My Organization
organizationalUnitName=My Unit
emailAddress=me@example.com
countryName=NO
localityName=Oslo
CONF
	t0=$(now_ns)
	openssl ecparam -genkey -name P-256 -noout -out device-private.key
	openssl req -new -key device-private.key -out device-cert.req -config device-cert.conf
	openssl x509 -req -CA ca-cert.pem -CAkey ca-private.key -CAcreateserial \
		-in device-cert.req -out device-cert.pem -days 3650 2>/dev/null
	mender-artifact install -m 0600 device-private.key seed.img:/data/mender/mender-cert-private.pem
	mender-artifact install -m 0644 device-cert.pem seed.img:/data/mender/mender-cert.pem
	mender-artifact cp seed.img:/etc/mender/mender.conf mender.conf
	python3 - <<'PY'
import json
c = json.load(open("mender.conf"))
c["HttpsClient"] = {"Certificate": "/data/mender/mender-cert.pem",
                    "Key": "/data/mender/mender-cert-private.pem"}
json.dump(c, open("mender.conf", "w"), indent=2)
PY
	mender-artifact cp mender.conf seed.img:/etc/mender/mender.conf
	t1=$(now_ns)
	seed_us=$(((t1 - t0) / 1000))
	cd - >/dev/null
fi

printf '\nprovision, per device (median of %d runs, whole process, durable commits):\n' "$RUNS"
printf '  provstation, 1 GiB image    %8.2f ms\n' "$(echo "$us_1g / 1000" | bc -l)"
printf '  provstation, 16 GiB image   %8.2f ms   (16 GiB / 1 GiB: %.2fx)\n' \
	"$(echo "$us_16g / 1000" | bc -l)" "$(echo "$us_16g / $us_1g" | bc -l)"
if [ -n "$seed_us" ]; then
	printf '  seed procedure, 1 GiB image %8.2f ms   (openssl, mender-artifact install/cp, JSON edit)\n' \
		"$(echo "$seed_us / 1000" | bc -l)"
	printf '  ratio seed / provstation    %8.0fx\n' "$(echo "$seed_us / $us_1g" | bc -l)"
else
	echo "  seed procedure: skipped (mender-artifact or openssl missing)"
fi
