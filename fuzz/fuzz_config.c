/* fuzz_config.c — libFuzzer target for the station configuration: arbitrary bytes as an INI
 * file through ps_config_load_string. Whatever it accepts must be freed cleanly. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	struct ps_config cfg;
	struct ps_err err;

	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0'; /* the file is read as a string: a NUL ends it */
	if (ps_config_load_string(&cfg, text, "fuzz.conf", &err) == 0)
		ps_config_free(&cfg);
	free(text);
	return 0;
}
