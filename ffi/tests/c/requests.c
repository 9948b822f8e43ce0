/* Setup from memory and requests that do not block, from C: a client with no data directory
 * registers and logs in in the background (the outcome, a wrong password included, comes as
 * an event with the request's id), exports its credentials, and a second client made from
 * those bytes is the same device and logs in without the password. Against a login server
 * that never answers, a cancel ends a login and a registration at once.
 *
 *   requests NETWORK_FILE SILENT_NETWORK_FILE OFFLINE_NETWORK_FILE
 *   (a login server must be running; nothing listens at the offline one's address)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "natter.h"
#include "check.h"

static char network_text[16384];

/* A client with nothing on disk: the network from memory, no data directory, and the
   credentials given (or none). */
static NatterClient *from_memory(const char *network_file, const uint8_t *credentials,
                                 size_t len, NatterResult want) {
    FILE *f = fopen(network_file, "r");
    if (!f) return NULL;
    size_t n = fread(network_text, 1, sizeof network_text - 1, f);
    fclose(f);
    network_text[n] = 0;
    NatterOptions o;
    EXPECT(natter_options_default(&o, NATTER_OPTIONS_VERSION), NATTER_OK);
    CHECK(o.data_dir == NULL && o.credentials == NULL && o.credentials_len == 0);
    o.network_toml = network_text;
    o.listen = "127.0.0.1:0";
    o.audio = NATTER_AUDIO_APP;
    o.credentials = credentials;
    o.credentials_len = len;
    NatterClient *c = NULL;
    EXPECT(natter_client_new(&o, &c), want);
    return c;
}

/* Wait for the end of `request` and check its result. */
static void finished(NatterClient *c, NatterEventKind kind, uint64_t request, NatterResult want) {
    NatterEvent *e = next_of(c, kind);
    if (!e) return;
    CHECK(e->request == request);
    CHECK(e->user != NULL); /* the user asked for, even when it failed or was cancelled */
    if (e->result != want)
        fprintf(stderr, "request %llu: %s (%s), wanted %s\n", (unsigned long long)request,
                natter_result_message(e->result), e->detail, natter_result_message(want));
    CHECK(e->result == want);
    CHECK(e->detail != NULL && e->detail[0] != 0);
    natter_event_free(e);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: requests NETWORK_FILE SILENT_NETWORK_FILE OFFLINE_NETWORK_FILE\n");
        return 2;
    }
    const char *password = "erin's own password";
    NatterClient *a = from_memory(argv[1], NULL, 0, NATTER_OK);
    if (!a) return 1;

    uint64_t reg = 0, wrong = 0, right = 0;
    EXPECT(natter_client_register_begin(a, "erin", password, &reg), NATTER_OK);
    CHECK(reg != 0);
    finished(a, NATTER_EVENT_REGISTER_FINISHED, reg, NATTER_OK);
    /* Checked at once, without the server. */
    EXPECT(natter_client_login_begin(a, "9lives", password, &wrong), NATTER_INVALID_USER_NAME);
    EXPECT(natter_client_login_begin(a, "erin", "not her password", &wrong), NATTER_OK);
    finished(a, NATTER_EVENT_LOGIN_FINISHED, wrong, NATTER_WRONG_PASSWORD);
    NatterNodeState st = {.version = NATTER_NODE_STATE_VERSION};
    EXPECT(natter_client_get_state(a, &st), NATTER_OK);
    CHECK(!st.logged_in);
    EXPECT(natter_client_login_begin(a, "erin", password, &right), NATTER_OK);
    CHECK(right != wrong && right != reg);
    finished(a, NATTER_EVENT_LOGIN_FINISHED, right, NATTER_OK);
    EXPECT(natter_client_get_state(a, &st), NATTER_OK);
    CHECK(st.logged_in);
    /* Ended: nothing to cancel. */
    EXPECT(natter_client_cancel(a, right), NATTER_UNKNOWN_REQUEST);

    /* The credentials: too small a buffer says how many bytes; NATTER_CREDENTIALS_MAX_LEN
       always holds them. */
    uint8_t creds[NATTER_CREDENTIALS_MAX_LEN];
    size_t len = 0;
    EXPECT(natter_client_export_credentials(a, creds, 8, &len), NATTER_BUFFER_TOO_SMALL);
    CHECK(len > 69 && len <= NATTER_CREDENTIALS_MAX_LEN);
    EXPECT(natter_client_export_credentials(a, creds, sizeof creds, &len), NATTER_OK);

    /* The same device elsewhere, from those bytes: it renews without the password. */
    NatterClient *b = from_memory(argv[1], creds, len, NATTER_OK);
    if (!b) return 1;
    EXPECT(natter_client_login(b, "erin", NULL), NATTER_OK);
    uint8_t again[NATTER_CREDENTIALS_MAX_LEN];
    size_t again_len = 0;
    EXPECT(natter_client_export_credentials(b, again, sizeof again, &again_len), NATTER_OK);
    CHECK(again_len == len && memcmp(again, creds, 69) == 0); /* the same keys */
    EXPECT(natter_client_start(b), NATTER_OK);
    NatterEvent *attached = next_of(b, NATTER_EVENT_ATTACHED);
    if (attached) natter_event_free(attached);

    /* Bytes that are not credentials: refused, and the reason says so. */
    uint8_t junk[100] = {1, 2, 3};
    CHECK(from_memory(argv[1], junk, sizeof junk, NATTER_INVALID_ARGUMENT) == NULL);
    char why[256];
    size_t why_len = 0;
    EXPECT(natter_last_error_message(why, sizeof why, &why_len), NATTER_OK);
    CHECK(strstr(why, "credentials") != NULL);
    /* Before version 3 a data directory is required. */
    NatterOptions v2;
    EXPECT(natter_options_default(&v2, 2), NATTER_OK);
    v2.network_toml = network_text;
    NatterClient *none = NULL;
    EXPECT(natter_client_new(&v2, &none), NATTER_NULL_ARGUMENT);

    /* A login server that accepts connections and never answers: cancels end the requests
       at once, with one event each, and log nobody in. */
    NatterClient *s = from_memory(argv[2], NULL, 0, NATTER_OK);
    if (!s) return 1;
    uint64_t login = 0, registration = 0;
    EXPECT(natter_client_login_begin(s, "erin", password, &login), NATTER_OK);
    EXPECT(natter_client_register_begin(s, "frank", password, &registration), NATTER_OK);
    EXPECT(natter_client_cancel(s, login), NATTER_OK);
    EXPECT(natter_client_cancel(s, login), NATTER_UNKNOWN_REQUEST);
    EXPECT(natter_client_cancel(s, 999999), NATTER_UNKNOWN_REQUEST);
    finished(s, NATTER_EVENT_LOGIN_FINISHED, login, NATTER_CANCELLED);
    EXPECT(natter_client_cancel(s, registration), NATTER_OK);
    finished(s, NATTER_EVENT_REGISTER_FINISHED, registration, NATTER_CANCELLED);
    EXPECT(natter_client_get_state(s, &st), NATTER_OK);
    CHECK(!st.logged_in);
    /* A login server that is not there: the event says so, with the errno. */
    NatterClient *off = from_memory(argv[3], NULL, 0, NATTER_OK);
    if (!off) return 1;
    uint64_t unreachable = 0;
    EXPECT(natter_client_login_begin(off, "erin", password, &unreachable), NATTER_OK);
    NatterEvent *gone = next_of(off, NATTER_EVENT_LOGIN_FINISHED);
    if (gone) {
        CHECK(gone->request == unreachable && gone->result == NATTER_LOGIN_UNREACHABLE);
        NatterErrorDetail why = {.version = NATTER_ERROR_DETAIL_VERSION};
        EXPECT(natter_event_error_detail(gone, &why), NATTER_OK);
        CHECK(why.result == NATTER_LOGIN_UNREACHABLE && why.os_error != 0);
        why.version = 99;
        EXPECT(natter_event_error_detail(gone, &why), NATTER_UNSUPPORTED_VERSION);
        natter_event_free(gone);
    }
    EXPECT(natter_client_free(off), NATTER_OK);
    /* A request still running when the client is freed ends with it (no event, no leak). */
    uint64_t left = 0;
    EXPECT(natter_client_login_begin(s, "erin", password, &left), NATTER_OK);

    EXPECT(natter_client_free(s), NATTER_OK);
    EXPECT(natter_client_free(b), NATTER_OK);
    EXPECT(natter_client_free(a), NATTER_OK);
    if (failures) {
        fprintf(stderr, "requests: %d check(s) failed\n", failures);
        return 1;
    }
    printf("requests: all checks passed\n");
    return 0;
}
