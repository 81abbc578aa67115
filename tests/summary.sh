#!/bin/sh
# summary.sh — sum the TAP results of one or more build trees into the line CI reads:
# "N passed, N failed, N skipped". Usage: tests/summary.sh BUILDDIR...
pass=0 fail=0 skip=0
for dir in "$@"; do
	for kind in PASS XFAIL; do
		n=$(find "$dir/tests" -name '*.trs' -exec grep -h "^:test-result: $kind" {} + 2>/dev/null | wc -l)
		pass=$((pass + n))
	done
	for kind in FAIL XPASS ERROR; do
		n=$(find "$dir/tests" -name '*.trs' -exec grep -h "^:test-result: $kind" {} + 2>/dev/null | wc -l)
		fail=$((fail + n))
	done
	n=$(find "$dir/tests" -name '*.trs' -exec grep -h "^:test-result: SKIP" {} + 2>/dev/null | wc -l)
	skip=$((skip + n))
done
echo "$pass passed, $fail failed, $skip skipped"
