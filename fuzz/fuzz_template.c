/* fuzz_template.c — libFuzzer target for device serials and the commonName template: the
 * input is "TEMPLATE\0SERIAL\0CN" (missing parts are empty or absent). Oracle: an expansion
 * that succeeds fits the buffer and is a valid commonName. */
#include "ca.h"
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 3);
	const char *tmpl, *serial, *cn = NULL;
	char out[PS_CN_MAX + 1];
	struct ps_err err;
	size_t n;

	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	buf[size] = buf[size + 1] = buf[size + 2] = '\0';
	tmpl = buf;
	n = strlen(tmpl);
	serial = buf + n + 1;
	if (n + 1 + strlen(serial) < size)
		cn = serial + strlen(serial) + 1;
	ps_check_serial(serial, &err);
	memset(out, 'X', sizeof(out));
	if (ps_expand_template(tmpl, serial, cn, out, sizeof(out), &err) == 0) {
		if (memchr(out, '\0', sizeof(out)) == NULL)
			abort(); /* not terminated inside the buffer */
		if (ps_check_common_name(out, &err) != 0)
			abort(); /* an accepted expansion is a valid commonName */
	}
	free(buf);
	return 0;
}
