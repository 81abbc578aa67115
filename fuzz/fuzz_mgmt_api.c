/* fuzz_mgmt_api.c — PLACEHOLDER for the libFuzzer target of the Mender management API
 * response parser (being written). To wire it: feed arbitrary bytes as an HTTP response body
 * (and, after a NUL byte, the headers) to the parser, free what it returns; then set
 * PENDING=0 at the top of this file so that tests/fuzz.sh builds and runs it. Seeds go in
 * fuzz/corpus/mgmt_api/. */
#define PENDING 1

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	(void)data;
	(void)size;
	return 0;
}
