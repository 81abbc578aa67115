# imgcheck.sh — checks of a Mender image's data partition after an interrupted job, shared
# by tests/crash.sh and tests/card_pull.sh (source it after lib.sh): e2fsck -fn classified,
# and the files of /mender each old or complete new. See tests/test_faults.c for the classes.

# fsck_class IMG OFFSET: clean; harmless (leaked counts and bitmaps only); leaked (also an
# unattached empty inode, or a link count one short of the two names pointing at the inode:
# what src/image.c's write order allows, repaired by e2fsck -p without asking); dangling (a
# temporary name naming a deleted inode: the write order rules it out, so callers fail it);
# bad (anything else). The output is in $TMP/fsck.out.
fsck_class() {
	e2fsck -fn "$1?offset=$2" >"$TMP/fsck.out" 2>&1
	st=$?
	case $st in 0) echo clean; return ;; 4) ;; *) echo bad; return ;; esac
	awk '
	/^(e2fsck [0-9]|Pass [1-5])/ || /^Fix\? no$/ || /^IGNORED\.$/ ||
	/^(Free (blocks|inodes) count wrong|Directories count wrong)/ ||
	/^(Block|Inode) bitmap differences:/ || /: \*+ WARNING: Filesystem still has errors/ ||
	/ files \(.*\), .* blocks$/ || /^$/ { next }
	/^Unattached zero-length inode [0-9]+\.  Clear\? no$/ {
		n = $4; sub(/\.$/, "", n); empty[n] = 1; leak = 1; prev = ""; next
	}
	/^Unattached inode [0-9]+$/ && ($3 in empty) { prev = "connect"; next }
	$0 == "Connect to /lost+found? no" && prev == "connect" { prev = ""; next }
	/^Inode [0-9]+ ref count is [0-9]+, should be [0-9]+\.  Fix\? no$/ {
		have = $6 + 0; want = $9 + 0
		if (have >= 1 && want == have + 1) { leak = 1; prev = ""; next }
	}
	/^Entry .\.provstation-new-[^ ]* in .* has deleted\/unused inode/ { dangling = 1; prev = ""; next }
	{ bad = 1; prev = "" }
	END { print bad ? "bad" : dangling ? "dangling" : leak ? "leaked" : "harmless" }
	' "$TMP/fsck.out"
}

# check_files IMG OFFSET NAME: the key and certificate parse and belong together (or are both
# absent); mender.conf is kept as $TMP/confs/NAME.json for check_confs; the certificate's
# serial is appended to $TMP/seen-serials.
mkdir -p "$TMP/confs"
: >>"$TMP/seen-serials"
check_files() {
	rm -rf "$TMP/dump" && mkdir "$TMP/dump"
	debugfs -c -R "rdump /mender $TMP/dump" "$1?offset=$2" >"$TMP/dump.out" 2>&1
	if grep -q -E 'rdump:|while ' "$TMP/dump.out"; then
		echo "debugfs: $(grep -m1 -E 'rdump:|while ' "$TMP/dump.out")"
		return 1
	fi
	d=$TMP/dump/mender
	# JSON is checked for all trials at once at the end (python3 starts slowly)
	cp "$d/mender.conf" "$TMP/confs/$3.json" 2>/dev/null ||
		{ echo "mender.conf is missing"; return 1; }
	[ -e "$d/mender-cert-private.pem" ] || [ -e "$d/mender-cert.pem" ] || return 0 # never provisioned
	a=$(openssl pkey -in "$d/mender-cert-private.pem" -pubout 2>/dev/null) ||
		{ echo "the key is not a complete PEM key"; return 1; }
	b=$(openssl x509 -in "$d/mender-cert.pem" -noout -serial -pubkey 2>/dev/null) ||
		{ echo "the certificate is not a complete PEM certificate"; return 1; }
	# a job killed between the key's and the certificate's swap would show here; the swap is
	# one directory-block write, so it must not
	[ "$a" = "$(echo "$b" | sed 1d)" ] || { echo "the key does not match the certificate"; return 1; }
	echo "$b" | sed -n 's/^serial=//p' >>"$TMP/seen-serials"
	return 0
}


# check_confs: every kept mender.conf parses as JSON (one python3 start for all); prints the
# ones that do not.
check_confs() {
	python3 -c '
import json, os, sys
for f in sorted(os.listdir(sys.argv[1])):
    try: json.load(open(os.path.join(sys.argv[1], f)))
    except Exception as e: print(f, e)' "$TMP/confs"
}
