#!/bin/sh
# cli.sh — the command line contract: help lists the commands, each has --help, exit statuses,
# one-line errors on stderr.
. "$SRCDIR/tests/lib.sh"

ok "help exits 0" "$PROVSTATION" help
"$PROVSTATION" help >"$TMP/help"
for c in $(awk '/^commands:/{f=1;next} f&&NF{print $1}' "$TMP/help" | grep -v '^Each$'); do
	ok "provstation $c --help exits 0" "$PROVSTATION" "$c" --help
done
grep -q '^  ca ' "$TMP/help"
check "help lists ca"
grep -q '^  provision ' "$TMP/help"
check "help lists provision"
fails "unknown command exits non-zero" "$PROVSTATION" frobnicate
"$PROVSTATION" frobnicate 2>"$TMP/err" >/dev/null
[ $? -eq 2 ] && [ "$(wc -l <"$TMP/err")" -eq 1 ] && grep -q "unknown command 'frobnicate'" "$TMP/err"
check "unknown command: exit 2, one line naming it"
"$PROVSTATION" ca init 2>"$TMP/err" >/dev/null
[ $? -eq 2 ] && [ "$(wc -l <"$TMP/err")" -eq 1 ] && grep -q -- "--dir is required" "$TMP/err"
check "missing required option: exit 2, one line"
"$PROVSTATION" flash --image a.img --image b.img --target t.img 2>"$TMP/err" >/dev/null
[ $? -eq 2 ] && [ "$(wc -l <"$TMP/err")" -eq 1 ] && grep -q -- "--image is given twice" "$TMP/err"
check "flash --image twice: exit 2, one line naming it"
"$PROVSTATION" provision --flash a.img --flash b.img --target t.img --serial S 2>"$TMP/err" >/dev/null
[ $? -eq 2 ] && [ "$(wc -l <"$TMP/err")" -eq 1 ] && grep -q -- "--flash is given twice" "$TMP/err"
check "provision --flash twice: exit 2, one line naming it"
ok "version" "$PROVSTATION" version
done_testing
