/* tap.h — a minimal TAP producer for the C unit tests (automake's tap-driver reads it). */
#ifndef PS_TAP_H
#define PS_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int tap_count;
static int tap_failures;

static inline void tap_result(int pass, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static inline void tap_result(int pass, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	tap_count++;
	printf("%s %d - ", pass ? "ok" : "not ok", tap_count);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	if (!pass) {
		tap_failures++;
		printf("#   failed at %s:%d\n", file, line);
	}
	fflush(stdout);
}

#define ok(cond, ...) tap_result(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define is_int(got, want, ...)                                                                     \
	do {                                                                                       \
		long long tap_g = (long long)(got), tap_w = (long long)(want);                     \
		tap_result(tap_g == tap_w, __FILE__, __LINE__, __VA_ARGS__);                       \
		if (tap_g != tap_w)                                                                \
			printf("#   got %lld, want %lld\n", tap_g, tap_w);                         \
	} while (0)
#define is_str(got, want, ...)                                                                     \
	do {                                                                                       \
		const char *tap_g = (got), *tap_w = (want);                                        \
		int tap_same = tap_g && tap_w && strcmp(tap_g, tap_w) == 0;                        \
		tap_result(tap_same, __FILE__, __LINE__, __VA_ARGS__);                             \
		if (!tap_same)                                                                     \
			printf("#   got '%s', want '%s'\n", tap_g ? tap_g : "(null)",              \
			       tap_w ? tap_w : "(null)");                                          \
	} while (0)
#define contains(haystack, needle, ...)                                                            \
	tap_result((haystack) != NULL && strstr((haystack), (needle)) != NULL, __FILE__, __LINE__, \
		   __VA_ARGS__)

static inline int tap_done(void)
{
	printf("1..%d\n", tap_count);
	return tap_failures == 0 ? 0 : 1;
}

#endif
