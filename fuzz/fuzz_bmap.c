/* fuzz_bmap.c — PLACEHOLDER for the libFuzzer target of the bmap parser (src/bmap.c, being
 * written). To wire it: feed arbitrary bytes to the parser, free what it returns, and add
 * oracles (ranges sorted, inside the image, checksums hex of the declared type); then set
 * PENDING=0 at the top of this file so that tests/fuzz.sh builds and runs it. Seeds go in
 * fuzz/corpus/bmap/. */
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
