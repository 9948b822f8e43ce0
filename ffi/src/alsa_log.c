/* ALSA's error messages into Natter's logs instead of the application's standard error.
 *
 * ALSA prints its errors (a missing card 0 in a container, a device that cannot be opened)
 * on stderr through a process-wide, C-variadic handler, which Rust cannot define. This one
 * formats the message and hands it to the function natter_internal_alsa_quiet() was given
 * (the library's log, target "alsa"). Built by build.rs into libnatter; not part of its ABI
 * (the symbol is not exported from the shared library). */
#include <alsa/asoundlib.h>
#include <stdarg.h>
#include <stdio.h>

static void (*natter_alsa_sink)(const char *line);

static void natter_alsa_handler(const char *file, int line, const char *function, int err,
                                const char *fmt, ...) {
    char message[512];
    char out[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (err)
        snprintf(out, sizeof out, "%s:%d (%s) %s: %s", file, line, function, message,
                 snd_strerror(err));
    else
        snprintf(out, sizeof out, "%s:%d (%s) %s", file, line, function, message);
    if (natter_alsa_sink) natter_alsa_sink(out);
}

/* Route ALSA's messages to `sink` (called on whichever thread ALSA reports from). */
void natter_internal_alsa_quiet(void (*sink)(const char *line)) {
    natter_alsa_sink = sink;
    snd_lib_error_set_handler(natter_alsa_handler);
}
