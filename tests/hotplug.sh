#!/bin/sh
# hotplug.sh — runs tests/test_hotplug (the hotplug detector and the safety gate on USB card
# readers, SD cards and boards replayed by umockdev) under umockdev-wrapper, which preloads
# umockdev's library to divert /sys, /dev and udev's netlink socket into the test bed; skips
# when umockdev is absent.
. "$SRCDIR/tests/lib.sh"
need umockdev-wrapper
[ -x "$BUILDDIR/tests/test_hotplug" ] ||
	skip_all "tests/test_hotplug was not built: configure found no umockdev-1.0 (apt-get install libumockdev-dev)"
# AddressSanitizer wants its runtime first among the loaded libraries; umockdev's preload
# library comes first here, which is fine for the test.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
export ASAN_OPTIONS
exec umockdev-wrapper "$BUILDDIR/tests/test_hotplug"
