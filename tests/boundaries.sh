#!/bin/sh
# boundaries.sh — the layering rules: curses only under ui/, SQL only under db/, every source
# file opens with a comment saying what it owns.
. "$SRCDIR/tests/lib.sh"
cd "$SRCDIR"

files=$(find src db udev ui tests -name '*.[ch]' 2>/dev/null | sort)
bad=$(echo "$files" | grep -v '^ui/' | xargs -r grep -l '#include <n\?curses' || true)
[ -z "$bad" ]
check "curses is included only under ui/ ${bad:+(found in: $bad)}"
bad=$(echo "$files" | grep -v '^db/' | grep -v '^tests/' | xargs -r grep -l -E '#include <sqlite3.h>|sqlite3_' || true)
[ -z "$bad" ]
check "SQLite is used only under db/ ${bad:+(found in: $bad)}"
bad=$(echo "$files" | grep -v '^db/' | grep -v '^tests/' |
	xargs -r grep -l -E '"(SELECT|INSERT|UPDATE|DELETE|CREATE TABLE|PRAGMA) ' || true)
[ -z "$bad" ]
check "SQL text lives only under db/ ${bad:+(found in: $bad)}"
bad=
for f in $files; do
	head -1 "$f" | grep -q '^/\* [a-z_0-9]*\.[ch] — ' || bad="$bad $f"
done
[ -z "$bad" ]
check "every C file starts with a comment naming what it owns ${bad:+(missing in:$bad)}"
done_testing
