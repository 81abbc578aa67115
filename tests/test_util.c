/* test_util.c — unit tests for util.c: text checks, templates, times, durable writes. */
#include "config.h"
#include "tap.h"
#include "util.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void)
{
	struct ps_err err = {""};
	char out[128];
	char dir[] = "/tmp/ps-test-util-XXXXXX";
	char path[256];
	char *text = NULL;
	size_t len = 0;
	struct stat st;
	time_t t;

	ok(ps_check_text("serial", "ABC-123", 64, &err) == 0, "plain serial accepted");
	ok(ps_check_text("serial", "", 64, &err) == PS_EINVAL, "empty serial refused");
	contains(err.msg, "serial is empty", "message names the serial");
	ok(ps_check_text("serial", "A\tB", 64, &err) == PS_EINVAL, "tab refused");
	contains(err.msg, "control character", "message says control character");
	ok(ps_check_text("serial", "\xff\xfe", 64, &err) == PS_EINVAL, "bad UTF-8 refused");
	ok(ps_check_text("serial", "Ærø-1", 64, &err) == 0, "UTF-8 serial accepted");
	ok(ps_check_text("serial", "SN\xc2\x9bX", 64, &err) == PS_EINVAL, "C1 control refused");
	contains(err.msg, "U+009B", "names the C1 control");
	ok(ps_check_text("serial", "SN\xe2\x80\xa8X", 64, &err) == PS_EINVAL,
	   "line separator refused");
	ok(ps_check_text("serial", "\xc2\xa0", 64, &err) == 0, "no-break space is printable");
	memset(out, 'x', 65);
	out[65] = '\0';
	ok(ps_check_text("serial", out, 64, &err) == PS_EINVAL, "65 bytes refused");
	contains(err.msg, "more than 64", "message gives the limit");

	ok(ps_expand_template("{serial}.devices.example.com", "SN1", NULL, out, sizeof(out),
			      &err) == 0,
	   "template expands");
	is_str(out, "SN1.devices.example.com", "expanded commonName");
	ok(ps_expand_template("{serial", "SN1", NULL, out, sizeof(out), &err) == PS_EINVAL,
	   "unclosed placeholder refused");
	ok(ps_expand_template("{mac}.x", "SN1", NULL, out, sizeof(out), &err) == PS_EINVAL,
	   "unknown placeholder refused");
	contains(err.msg, "unknown placeholder", "message says unknown placeholder");
	ok(ps_expand_template("{serial}{serial}{serial}", "0123456789012345678901234", NULL, out,
			      sizeof(out), &err) == PS_EINVAL,
	   "a commonName over 64 bytes refused");

	ok(ps_parse_time("2026-11-23T11:07:36Z", &t, &err) == 0, "RFC 3339 parses");
	ps_format_time(t, out);
	is_str(out, "2026-11-23T11:07:36Z", "time round trip");
	ok(ps_parse_time("2026-11-23", &t, &err) == 0, "date parses");
	ok(ps_parse_time("yesterday", &t, &err) == PS_EINVAL, "garbage time refused");

	setenv("PROVSTATION_NOW", "1700000000", 1);
	is_int(ps_now(), 1700000000, "PROVSTATION_NOW pins the clock");
	unsetenv("PROVSTATION_NOW");

	ok(mkdtemp(dir) != NULL, "temporary directory");
	snprintf(path, sizeof(path), "%s/secret", dir);
	ok(ps_write_file(path, "abc", 3, 0600, PS_WRITE_EXCL, &err) == 0, "durable write");
	ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600, "mode 0600 kept");
	ok(ps_write_file(path, "xyz", 3, 0600, PS_WRITE_EXCL, &err) == PS_EEXIST,
	   "exclusive write refuses an existing file");
	ok(ps_read_file(path, 100, &text, &len, &err) == 0 && len == 3 && strcmp(text, "abc") == 0,
	   "content unchanged after the refusal");
	free(text);
	ok(ps_write_file(path, "xyz", 3, 0644, 0, &err) == 0, "replacing write");
	ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0644, "new mode");
	unlink(path);
	rmdir(dir);

	ok(ps_sibling_path("/var/lib/provstation/audit.db", "x.cache", out, sizeof(out)) == 0,
	   "sibling path");
	is_str(out, "/var/lib/provstation/x.cache", "in the same directory");
	ok(ps_sibling_path("audit.db", "x.cache", out, sizeof(out)) == 0, "sibling of a bare name");
	is_str(out, "x.cache", "in the current directory");
	ok(ps_sibling_path("/audit.db", "x", out, sizeof(out)) == 0, "sibling at the root");
	is_str(out, "/x", "in /");
	ok(ps_sibling_path("/a/b.db", "xxxxxxxx", out, 8) == -1, "too long for the buffer: -1");
	ok(ps_parent_dir("/var/lib/provstation/audit.db", out, sizeof(out)) == 0 &&
	       strcmp(out, "/var/lib/provstation") == 0,
	   "parent directory: %s", out);
	ok(ps_parent_dir("/audit.db", out, sizeof(out)) == 0 && strcmp(out, "/") == 0,
	   "parent at the root: %s", out);
	ok(ps_parent_dir("audit.db", out, sizeof(out)) == 0 && strcmp(out, ".") == 0,
	   "parent of a bare name: %s", out);
	ok(ps_parent_dir("/abcdefgh/x", out, 4) == -1, "parent too long for the buffer: -1");
	is_str(ps_base_name("/srv/images/g.img.zst"), "g.img.zst", "base name");
	is_str(ps_base_name("g.img"), "g.img", "base name without a directory");
	is_str(ps_base_name("/srv/images/"), "/srv/images/",
	       "a path ending with a slash stays whole");
	return tap_done();
}
