/* What the C tests share: a failure counter and two checks that report where they failed. */
#ifndef NATTER_TEST_CHECK_H
#define NATTER_TEST_CHECK_H

#include <stdio.h>

#include "natter.h"

static int failures;

#define EXPECT(call, want)                                                                     \
    do {                                                                                       \
        NatterResult r_ = (call);                                                              \
        if (r_ != (want)) {                                                                    \
            fprintf(stderr, "%s:%d: %s gave %s, wanted %s\n", __FILE__, __LINE__, #call,       \
                    natter_result_message(r_), natter_result_message(want));                   \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: %s is false\n", __FILE__, __LINE__, #cond);                \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

/* The next event of `kind` (others are freed and skipped), or NULL (a failure) after 30 s. */
static inline NatterEvent *next_of(NatterClient *c, NatterEventKind kind) {
    for (int i = 0; i < 300; i++) {
        NatterEvent *e = NULL;
        if (natter_client_wait_event(c, 100, &e) != NATTER_OK) continue;
        if (e->kind == kind) return e;
        natter_event_free(e);
    }
    fprintf(stderr, "no event of kind %d\n", (int)kind);
    failures++;
    return NULL;
}

#endif
