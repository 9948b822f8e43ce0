/* Every function of natter.h, called with NULL pointers, made-up handles, freed handles,
 * unknown calls, bad strings and out-of-range values: each must return its documented error,
 * never crash (the test runs under valgrind). ffi/tests/c_programs.rs checks that every
 * function the header declares is called here.
 *
 *   null_args NETWORK_FILE DATA_DIR
 *
 * NETWORK_FILE must parse; its login server need not exist (logging in is expected to fail
 * with NATTER_LOGIN_UNREACHABLE).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "natter.h"

static int checks, failures;

#define EXPECT(call, want)                                                                     \
    do {                                                                                       \
        NatterResult r_ = (call);                                                              \
        if (r_ != (NatterResult)(want)) {                                                      \
            fprintf(stderr, "%s:%d: %s gave %u (%s), expected %s\n", __FILE__, __LINE__, #call, \
                    (unsigned)r_, natter_result_message(r_), #want);                           \
            failures++;                                                                        \
        }                                                                                      \
        checks++;                                                                              \
    } while (0)

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: %s is false\n", __FILE__, __LINE__, #cond);                \
            failures++;                                                                        \
        }                                                                                      \
        checks++;                                                                              \
    } while (0)

/* Log lines delivered to the application (on the library's natter-log thread). */
static volatile int log_lines, log_login_warnings;
static void on_log(void *user_data, uint32_t level, const char *target, const char *message) {
    (void)user_data;
    log_lines++;
    if (level == NATTER_LOG_WARN && strstr(message, "logging in") && strstr(target, "natter"))
        log_login_warnings++;
}

static void never_called(void *user_data, const NatterEvent *event) {
    (void)user_data;
    (void)event;
}

/* Every function that takes a client, with `c` as the client: all must give `want`. */
static void all_with_client(NatterClient *c, NatterResult want) {
    NatterNodeState st;
    st.version = NATTER_NODE_STATE_VERSION;
    NatterCallStats cs;
    cs.version = NATTER_CALL_STATS_VERSION;
    char buf[64];
    size_t len = 0;
    uint64_t id = 0;
    int fd = -1;
    NatterEvent *e = NULL;
    int16_t pcm[320] = {0};
    NatterAccountDevice devices[2];
    size_t n_devices = 0;
    uint8_t device_id[16] = {0};
    EXPECT(natter_client_register(c, "alice", "a good password"), want);
    EXPECT(natter_client_login(c, "alice", "a good password"), want);
    EXPECT(natter_client_devices(c, devices, 2, &n_devices), want);
    EXPECT(natter_client_revoke_device(c, device_id, "a good password"), want);
    EXPECT(natter_client_change_password(c, "a good password", "another good one", true), want);
    EXPECT(natter_client_logout(c), want);
    NatterContactList *contacts = NULL;
    EXPECT(natter_client_contacts(c, &contacts), want);
    CHECK(contacts == NULL);
    EXPECT(natter_client_add_contact(c, "bob", "hi", NULL), want);
    EXPECT(natter_client_decline_contact(c, "bob", NULL), want);
    EXPECT(natter_client_remove_contact(c, "bob", NULL), want);
    EXPECT(natter_client_block(c, "bob", true, NULL), want);
    EXPECT(natter_client_set_nickname(c, "bob", "Bobby", NULL), want);
    EXPECT(natter_client_set_group(c, "bob", "work", true, NULL), want);
    EXPECT(natter_client_sync_contacts(c, NULL, NULL), want);
    NatterMessageId message_id;
    NatterMessageList *messages = NULL;
    EXPECT(natter_client_send_message(c, "bob", "hi", NULL, &message_id), want);
    EXPECT(natter_client_history(c, "bob", NULL, 10, &messages), want);
    CHECK(messages == NULL);
    EXPECT(natter_client_search_messages(c, "hi", 10, &messages), want);
    CHECK(messages == NULL);
    uint32_t availability = 0;
    EXPECT(natter_client_set_presence(c, NATTER_AVAILABILITY_AWAY, "out"), want);
    EXPECT(natter_client_get_presence(c, &availability, buf, sizeof buf, &len), want);
    EXPECT(natter_client_set_away_after(c, 300), want);
    EXPECT(natter_client_report_idle(c, 10), want);
    EXPECT(natter_client_login_begin(c, "alice", "a good password", &id), want);
    EXPECT(natter_client_register_begin(c, "alice", "a good password", &id), want);
    EXPECT(natter_client_cancel(c, 1), want);
    EXPECT(natter_call_set_microphone(c, 1, "natter_a"), want);
    EXPECT(natter_call_set_speaker(c, 1, NULL), want);
    uint8_t creds[NATTER_CREDENTIALS_MAX_LEN];
    EXPECT(natter_client_export_credentials(c, creds, sizeof creds, &len), want);
    EXPECT(natter_client_start(c), want);
    EXPECT(natter_client_stop(c), want);
    EXPECT(natter_client_get_state(c, &st), want);
    EXPECT(natter_client_describe(c, buf, sizeof buf, &len), want);
    char *text = NULL;
    EXPECT(natter_client_describe_copy(c, &text), want);
    CHECK(text == NULL);
    EXPECT(natter_client_search(c, "alice", &id), want);
    EXPECT(natter_client_event_fd(c, &fd), want);
    EXPECT(natter_client_next_event(c, &e), want);
    EXPECT(natter_client_wait_event(c, 10, &e), want);
    EXPECT(natter_client_set_event_callback(c, never_called, NULL), want);
    EXPECT(natter_call_start(c, "alice", &id), want);
    EXPECT(natter_call_answer(c, 1), want);
    EXPECT(natter_call_decline(c, 1), want);
    EXPECT(natter_call_hang_up(c, 1), want);
    EXPECT(natter_call_hold(c, 1), want);
    EXPECT(natter_call_resume(c, 1), want);
    EXPECT(natter_call_set_muted(c, 1, true), want);
    EXPECT(natter_call_set_voice_processing(c, 1, 0), want);
    EXPECT(natter_call_get_stats(c, 1, &cs), want);
    EXPECT(natter_call_push_audio(c, 1, pcm, 320), want);
    EXPECT(natter_call_pull_audio(c, 1, pcm, 320, &len), want);
    CHECK(id == 0 && fd == -1 && e == NULL);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s NETWORK_FILE DATA_DIR\n", argv[0]);
        return 2;
    }
    const char *network = argv[1], *data = argv[2];

    /* Functions without pointers. */
    CHECK(natter_version() != NULL && strlen(natter_version()) > 0);
    CHECK(natter_abi_version() >> 16 == NATTER_ABI_MAJOR);
    CHECK(natter_abi_version() >= (NATTER_ABI_MAJOR << 16 | NATTER_ABI_MINOR << 8 | NATTER_ABI_PATCH));
    /* The header's own check: this library, a later patch; not another major, nor (while the
       major is 0) another minor. */
    CHECK(NATTER_ABI_IS_COMPATIBLE(natter_abi_version()));
    CHECK(NATTER_ABI_IS_COMPATIBLE(natter_abi_version() + 1u));
    CHECK(!NATTER_ABI_IS_COMPATIBLE(natter_abi_version() + (1u << 16)));
    CHECK(!NATTER_ABI_IS_COMPATIBLE(natter_abi_version() + (1u << 8)));
    CHECK(!NATTER_ABI_IS_COMPATIBLE(NATTER_ABI_VERSION - 1u) || NATTER_ABI_PATCH == 0);
    CHECK(natter_result_message(0) != NULL && strcmp(natter_result_message(0), "ok") == 0);
    CHECK(strcmp(natter_result_message(0xdeadbeef), "unknown result") == 0);
    CHECK(strcmp(natter_result_message(NATTER_NO_EVENT), "unknown result") != 0);
    CHECK(natter_audio_sample_rate() == 16000);
    CHECK(natter_audio_frame_samples() == 320);

    /* natter_version_copy: ask the size, then fill. */
    size_t len = 0;
    char small[2];
    EXPECT(natter_version_copy(NULL, 0, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_version_copy(NULL, 0, &len), NATTER_BUFFER_TOO_SMALL);
    CHECK(len == strlen(natter_version()));
    EXPECT(natter_version_copy(small, sizeof small, &len), NATTER_BUFFER_TOO_SMALL);

    /* Options. */
    NatterOptions o;
    EXPECT(natter_options_default(NULL, NATTER_OPTIONS_VERSION), NATTER_NULL_ARGUMENT);
    EXPECT(natter_options_default(&o, 0), NATTER_UNSUPPORTED_VERSION);
    EXPECT(natter_options_default(&o, 9999), NATTER_UNSUPPORTED_VERSION);
    EXPECT(natter_options_default(&o, NATTER_OPTIONS_VERSION), NATTER_OK);
    CHECK(o.version == NATTER_OPTIONS_VERSION && o.role == NATTER_ROLE_CLIENT &&
          o.audio == NATTER_AUDIO_DEVICES && o.encoder_complexity == 10 && o.listen == NULL &&
          o.network_toml == NULL);
    /* Version 1 (an application built against an older header) still works: only its
       fields are written and read. */
    {
        NatterOptions v1;
        memset(&v1, 0x5a, sizeof v1);
        EXPECT(natter_options_default(&v1, 1), NATTER_OK);
        CHECK(v1.version == 1 && v1.encoder_complexity == 10);
        CHECK(((const unsigned char *)&v1.network_toml)[0] == 0x5a); /* not written */
        v1.network_file = network;
        v1.data_dir = data;
        v1.audio = NATTER_AUDIO_APP;
        NatterClient *old = NULL;
        EXPECT(natter_client_new(&v1, &old), NATTER_OK);
        EXPECT(natter_client_free(old), NATTER_OK);
    }
    /* The network description from memory instead of a file: one or the other. */
    {
        NatterOptions m;
        EXPECT(natter_options_default(&m, NATTER_OPTIONS_VERSION), NATTER_OK);
        m.data_dir = data;
        m.audio = NATTER_AUDIO_APP;
        m.network_file = network;
        m.network_toml = "[login]";
        NatterClient *mc = NULL;
        EXPECT(natter_client_new(&m, &mc), NATTER_INVALID_ARGUMENT);
        m.network_file = NULL;
        m.network_toml = "this is not a network description";
        EXPECT(natter_client_new(&m, &mc), NATTER_IO_ERROR);
        CHECK(mc == NULL);
    }

    /* natter_client_new: every way to get it wrong. */
    NatterClient *c = NULL;
    EXPECT(natter_client_new(NULL, &c), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_new(&o, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_new(&o, &c), NATTER_NULL_ARGUMENT); /* no network file */
    o.network_file = network;
    /* No data directory: nothing on disk from version 3; required before. */
    {
        NatterOptions v2;
        memset(&v2, 0x5a, sizeof v2);
        EXPECT(natter_options_default(&v2, 2), NATTER_OK);
        CHECK(v2.version == 2 && v2.network_toml == NULL);
        CHECK(((const unsigned char *)&v2.credentials_len)[0] == 0x5a); /* not written */
        v2.network_file = network;
        v2.audio = NATTER_AUDIO_APP;
        EXPECT(natter_client_new(&v2, &c), NATTER_NULL_ARGUMENT);
        NatterOptions v3 = o;
        v3.audio = NATTER_AUDIO_APP;
        EXPECT(natter_client_new(&v3, &c), NATTER_OK);
        EXPECT(natter_client_free(c), NATTER_OK);
        c = NULL;
        uint8_t junk[4] = {0};
        v3.credentials = junk; /* not credentials */
        v3.credentials_len = sizeof junk;
        EXPECT(natter_client_new(&v3, &c), NATTER_INVALID_ARGUMENT);
        v3.credentials_len = 0; /* a pointer with no bytes is not credentials either */
        EXPECT(natter_client_new(&v3, &c), NATTER_INVALID_ARGUMENT);
        v3.credentials = NULL;
        v3.credentials_len = 7; /* NULL with a length */
        EXPECT(natter_client_new(&v3, &c), NATTER_NULL_ARGUMENT);
        CHECK(c == NULL);
    }
    o.data_dir = data;
    o.version = 0;
    EXPECT(natter_client_new(&o, &c), NATTER_UNSUPPORTED_VERSION);
    o.version = NATTER_OPTIONS_VERSION;
    o.listen = "not an address";
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_ARGUMENT);
    o.listen = "127.0.0.1:0";
    o.role = 77;
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_ARGUMENT);
    o.role = NATTER_ROLE_SUPER_NODE; /* needs a fixed port */
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_ARGUMENT);
    o.role = NATTER_ROLE_CLIENT;
    o.audio = 5;
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_ARGUMENT);
    o.audio = NATTER_AUDIO_APP;
    CHECK(o.voice_processing == NATTER_VOICE_PROCESSING_AUTO); /* the default */
    o.voice_processing = 8; /* no such flag */
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_ARGUMENT);
    o.voice_processing = NATTER_VOICE_PROCESSING_AUTO | NATTER_VOICE_GAIN_CONTROL;
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_ARGUMENT);
    o.voice_processing = NATTER_VOICE_PROCESSING_AUTO;
    o.encoder_complexity = 999;
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_ARGUMENT);
    o.encoder_complexity = 11;
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_ARGUMENT);
    o.encoder_complexity = 0;
    o.network_file = "\xff\xfe not UTF-8";
    EXPECT(natter_client_new(&o, &c), NATTER_INVALID_UTF8);
    o.network_file = "/nonexistent/network.toml";
    EXPECT(natter_client_new(&o, &c), NATTER_IO_ERROR);
    o.network_file = network;
    CHECK(c == NULL); /* outputs are written only on success */
    EXPECT(natter_client_new(&o, &c), NATTER_OK);
    CHECK(c != NULL);

    /* NULL, made-up and freed handles. */
    all_with_client(NULL, NATTER_NULL_ARGUMENT);
    all_with_client((NatterClient *)(uintptr_t)0x12345678u, NATTER_INVALID_HANDLE);
    all_with_client((NatterClient *)(uintptr_t)1u, NATTER_INVALID_HANDLE);
    NatterClient *freed = NULL;
    EXPECT(natter_client_new(&o, &freed), NATTER_OK);
    EXPECT(natter_client_free(freed), NATTER_OK);
    all_with_client(freed, NATTER_INVALID_HANDLE);
    EXPECT(natter_client_free(freed), NATTER_INVALID_HANDLE); /* double free: an error */
    EXPECT(natter_client_free((NatterClient *)(uintptr_t)0x12345678u), NATTER_INVALID_HANDLE);
    EXPECT(natter_client_free(NULL), NATTER_OK);

    /* A live client: NULL pointer arguments and bad strings. */
    NatterNodeState st;
    NatterCallStats cs;
    NatterEvent *e = NULL;
    uint64_t id = 0;
    int fd = -1;
    int16_t pcm[320] = {0};
    char buf[8];
    EXPECT(natter_client_register(c, NULL, "a good password"), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_register(c, "alice", NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_register(c, "\xc3\x28", "a good password"), NATTER_INVALID_UTF8);
    EXPECT(natter_client_register(c, "9 not a name", "a good password"), NATTER_INVALID_USER_NAME);
    EXPECT(natter_client_login(c, NULL, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_login(c, "alice", "\xff"), NATTER_INVALID_UTF8);
    EXPECT(natter_client_login(c, "no", NULL), NATTER_INVALID_USER_NAME);
    uint64_t request = 0;
    EXPECT(natter_client_login_begin(c, NULL, NULL, &request), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_login_begin(c, "alice", NULL, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_login_begin(c, "alice", "\xff", &request), NATTER_INVALID_UTF8);
    EXPECT(natter_client_login_begin(c, "no", NULL, &request), NATTER_INVALID_USER_NAME);
    EXPECT(natter_client_register_begin(c, "alice", NULL, &request), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_register_begin(c, "alice", "a good password", NULL),
           NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_register_begin(c, "9 not a name", "a good password", &request),
           NATTER_INVALID_USER_NAME);
    CHECK(request == 0);
    EXPECT(natter_client_cancel(c, 0), NATTER_UNKNOWN_REQUEST);
    EXPECT(natter_call_set_microphone(c, 1, "\xff"), NATTER_INVALID_UTF8);
    /* The audio devices: the count is required; a NULL array only with room for none. */
    size_t n_audio = 0;
    NatterAudioDevice audio_devices[2];
    EXPECT(natter_audio_devices(audio_devices, 2, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_audio_devices(NULL, 2, &n_audio), NATTER_NULL_ARGUMENT);
    NatterResult listed = natter_audio_devices(NULL, 0, &n_audio);
    CHECK(listed == NATTER_OK || listed == NATTER_BUFFER_TOO_SMALL);
    EXPECT(natter_client_cancel(c, 12345), NATTER_UNKNOWN_REQUEST);
    uint8_t credentials[NATTER_CREDENTIALS_MAX_LEN];
    size_t credentials_len = 0;
    EXPECT(natter_client_export_credentials(c, credentials, sizeof credentials, NULL),
           NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_export_credentials(c, NULL, 0, &credentials_len),
           NATTER_BUFFER_TOO_SMALL);
    CHECK(credentials_len > 0 && credentials_len <= NATTER_CREDENTIALS_MAX_LEN);
    uint8_t device_id[16] = {0};
    NatterAccountDevice devices[1];
    EXPECT(natter_client_devices(c, NULL, 1, &len), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_devices(c, devices, 1, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_revoke_device(c, NULL, "a good password"), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_revoke_device(c, device_id, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_change_password(c, NULL, "another good one", false), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_change_password(c, "a good password", "\xff", false), NATTER_INVALID_UTF8);
    EXPECT(natter_client_get_state(c, NULL), NATTER_NULL_ARGUMENT);
    st.version = 0;
    EXPECT(natter_client_get_state(c, &st), NATTER_UNSUPPORTED_VERSION);
    EXPECT(natter_client_describe(c, buf, sizeof buf, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_describe(c, NULL, 0, &len), NATTER_BUFFER_TOO_SMALL);
    CHECK(len > 0);
    EXPECT(natter_client_describe(c, buf, sizeof buf, &len), NATTER_BUFFER_TOO_SMALL);
    /* One call, no race: the library allocates, natter_string_free frees. */
    {
        char *text = NULL;
        EXPECT(natter_client_describe_copy(c, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_describe_copy(c, &text), NATTER_OK);
        CHECK(text != NULL && strlen(text) == len);
        EXPECT(natter_string_free(text), NATTER_OK);
        EXPECT(natter_string_free(text), NATTER_INVALID_HANDLE); /* twice: caught */
        EXPECT(natter_string_free(NULL), NATTER_OK);
    }
    EXPECT(natter_client_search(c, NULL, &id), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_search(c, "alice", NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_event_fd(c, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_next_event(c, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_wait_event(c, 0, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_event_free(NULL), NATTER_OK);
    {
        NatterSearchDevice d;
        EXPECT(natter_event_search_device(NULL, 0, &d), NATTER_NULL_ARGUMENT);
        EXPECT(natter_event_search_device((const NatterEvent *)(uintptr_t)0x1000u, 0, &d),
               NATTER_INVALID_HANDLE);
        NatterErrorDetail why = {.version = NATTER_ERROR_DETAIL_VERSION};
        EXPECT(natter_event_error_detail(NULL, &why), NATTER_NULL_ARGUMENT);
        EXPECT(natter_event_error_detail((const NatterEvent *)(uintptr_t)0x1000u, NULL),
               NATTER_NULL_ARGUMENT);
        EXPECT(natter_event_error_detail((const NatterEvent *)(uintptr_t)0x1000u, &why),
               NATTER_INVALID_HANDLE);
    }
    EXPECT(natter_event_free((NatterEvent *)(uintptr_t)0x1000u), NATTER_INVALID_HANDLE);
    EXPECT(natter_client_set_event_callback(c, NULL, NULL), NATTER_OK); /* none: fine */
    EXPECT(natter_call_start(c, NULL, &id), NATTER_NULL_ARGUMENT);
    EXPECT(natter_call_start(c, "alice", NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_call_get_stats(c, 1, NULL), NATTER_NULL_ARGUMENT);
    cs.version = 42;
    EXPECT(natter_call_get_stats(c, 1, &cs), NATTER_UNSUPPORTED_VERSION);
    EXPECT(natter_call_push_audio(c, 1, NULL, 320), NATTER_NULL_ARGUMENT);
    EXPECT(natter_call_pull_audio(c, 1, NULL, 320, &len), NATTER_NULL_ARGUMENT);
    EXPECT(natter_call_push_audio(c, 1, NULL, 0), NATTER_UNKNOWN_CALL); /* empty is fine */
    EXPECT(natter_call_pull_audio(c, 1, pcm, 320, NULL), NATTER_UNKNOWN_CALL);
    /* Counts no buffer can have (issue 16: these results were missing from the docs). */
    EXPECT(natter_call_push_audio(c, 1, pcm, SIZE_MAX), NATTER_INVALID_ARGUMENT);
    EXPECT(natter_call_pull_audio(c, 1, pcm, SIZE_MAX, &len), NATTER_INVALID_ARGUMENT);
    {
        NatterAccountDevice many[1];
        size_t got = 0;
        EXPECT(natter_client_devices(c, many, SIZE_MAX, &got), NATTER_INVALID_ARGUMENT);
        NatterAudioDevice audio_many[1];
        EXPECT(natter_audio_devices(audio_many, SIZE_MAX, &got), NATTER_INVALID_ARGUMENT);
    }

    /* A live client in the wrong state. */
    st.version = NATTER_NODE_STATE_VERSION;
    EXPECT(natter_client_get_state(c, &st), NATTER_OK);
    CHECK(!st.logged_in && !st.started && st.super_nodes == 0 && st.udp_port == 0);
    EXPECT(natter_client_login(c, "alice", NULL), NATTER_PASSWORD_NEEDED);
    /* The library's logs go to the application's callback (and nowhere else). */
    EXPECT(natter_set_log_callback(on_log, NULL, 99), NATTER_INVALID_ARGUMENT);
    EXPECT(natter_set_log_callback(on_log, NULL, NATTER_LOG_WARN), NATTER_OK);
    EXPECT(natter_client_login(c, "alice", "a good password"), NATTER_LOGIN_UNREACHABLE);
    for (int i = 0; i < 200 && log_login_warnings == 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK(log_login_warnings == 1);
    EXPECT(natter_set_log_callback(on_log, NULL, NATTER_LOG_OFF), NATTER_OK);
    int lines_before = log_lines;
    EXPECT(natter_client_login(c, "alice", "a good password"), NATTER_LOGIN_UNREACHABLE);
    CHECK(log_lines == lines_before);
    EXPECT(natter_set_log_callback(NULL, NULL, NATTER_LOG_INFO), NATTER_OK);
    /* Why, for people and in typed form: the address, and the operating system's error. */
    {
        size_t need = 0;
        EXPECT(natter_last_error_message(NULL, 0, &need), NATTER_BUFFER_TOO_SMALL);
        char why[256];
        EXPECT(natter_last_error_message(why, sizeof why, &need), NATTER_OK);
        CHECK(strstr(why, "127.0.0.1:1") != NULL && strstr(why, "unreachable") != NULL);
        printf("last error: %s\n", why);
        NatterErrorDetail d;
        d.version = 99;
        EXPECT(natter_last_error_detail(&d), NATTER_UNSUPPORTED_VERSION);
        EXPECT(natter_last_error_detail(NULL), NATTER_NULL_ARGUMENT);
        d.version = NATTER_ERROR_DETAIL_VERSION;
        EXPECT(natter_last_error_detail(&d), NATTER_OK);
        CHECK(d.result == NATTER_LOGIN_UNREACHABLE && d.os_error == 111 /* ECONNREFUSED */);
        CHECK(d.retry_after_ms == 0 && d.minimum_version[0] == 0);
        /* Reading it changed nothing; a NULL argument records its own reason. */
        EXPECT(natter_client_search(c, NULL, &id), NATTER_NULL_ARGUMENT);
        EXPECT(natter_last_error_message(why, sizeof why, &need), NATTER_OK);
        CHECK(strstr(why, "NULL") != NULL);
        EXPECT(natter_last_error_detail(&d), NATTER_OK);
        CHECK(d.result == NATTER_NULL_ARGUMENT && d.os_error == 0);
    }
    EXPECT(natter_client_register(c, "alice", "a good password"), NATTER_LOGIN_UNREACHABLE);
    EXPECT(natter_client_start(c), NATTER_NOT_LOGGED_IN);
    EXPECT(natter_client_devices(c, devices, 1, &len), NATTER_NOT_LOGGED_IN);
    EXPECT(natter_client_revoke_device(c, device_id, "a good password"), NATTER_NOT_LOGGED_IN);
    EXPECT(natter_client_change_password(c, "a good password", "another good one", true),
           NATTER_NOT_LOGGED_IN);
    EXPECT(natter_client_logout(c), NATTER_NOT_LOGGED_IN);
    /* Chat: nothing to write or read before a login; message lists checked. */
    {
        NatterMessageList *list = NULL;
        NatterMessage message;
        NatterMessageId id;
        size_t count = 99;
        EXPECT(natter_client_send_message(c, "bob", "hi", NULL, &id), NATTER_NOT_LOGGED_IN);
        EXPECT(natter_client_send_message(c, NULL, "hi", NULL, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_send_message(c, "bob", NULL, NULL, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_send_message(c, "bob", "\xff", NULL, NULL), NATTER_INVALID_UTF8);
        EXPECT(natter_client_send_message(c, "bob", "hi", "zz", NULL), NATTER_INVALID_ARGUMENT);
        EXPECT(natter_client_history(c, "bob", NULL, 10, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_history(c, NULL, NULL, 10, &list), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_history(c, "bob", NULL, 10, &list), NATTER_NOT_LOGGED_IN);
        CHECK(list == NULL);
        EXPECT(natter_client_search_messages(c, NULL, 10, &list), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_search_messages(c, "hi", 10, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_search_messages(c, "hi", 10, &list), NATTER_NOT_LOGGED_IN);
        EXPECT(natter_message_list_count(NULL, &count), NATTER_NULL_ARGUMENT);
        EXPECT(natter_message_list_count((NatterMessageList *)c, &count), NATTER_INVALID_HANDLE);
        EXPECT(natter_message_list_get(NULL, 0, &message), NATTER_NULL_ARGUMENT);
        EXPECT(natter_message_list_get((NatterMessageList *)c, 0, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_message_list_free(NULL), NATTER_OK);
        EXPECT(natter_message_list_free((NatterMessageList *)c), NATTER_INVALID_HANDLE);
    }
    /* The buddy list: empty and not editable before a login; list objects checked. */
    {
        NatterContactList *list = NULL;
        size_t count = 99;
        NatterContact contact;
        bool changed = true;
        EXPECT(natter_client_contacts(c, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_contacts(c, &list), NATTER_OK);
        EXPECT(natter_contact_list_count(list, &count), NATTER_OK);
        CHECK(count == 0);
        EXPECT(natter_contact_list_count(list, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_contact_list_get(list, 0, &contact), NATTER_INVALID_ARGUMENT);
        EXPECT(natter_contact_list_get(list, 0, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_contact_list_free(list), NATTER_OK);
        EXPECT(natter_contact_list_free(list), NATTER_INVALID_HANDLE);
        EXPECT(natter_contact_list_free(NULL), NATTER_OK);
        EXPECT(natter_contact_list_count(NULL, &count), NATTER_NULL_ARGUMENT);
        EXPECT(natter_contact_list_get((NatterContactList *)c, 0, &contact), NATTER_INVALID_HANDLE);
        EXPECT(natter_client_add_contact(c, "bob", NULL, &changed), NATTER_NOT_LOGGED_IN);
        CHECK(changed); /* written only on success */
        EXPECT(natter_client_add_contact(c, NULL, NULL, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_add_contact(c, "bob", "\xff", NULL), NATTER_INVALID_UTF8);
        EXPECT(natter_client_decline_contact(c, "bob", NULL), NATTER_NOT_LOGGED_IN);
        EXPECT(natter_client_add_contact(c, "\xff", NULL, NULL), NATTER_INVALID_UTF8);
        EXPECT(natter_client_remove_contact(c, "bob", NULL), NATTER_NOT_LOGGED_IN);
        EXPECT(natter_client_block(c, "bob", true, NULL), NATTER_NOT_LOGGED_IN);
        EXPECT(natter_client_set_nickname(c, "bob", NULL, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_set_group(c, "bob", NULL, true, NULL), NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_sync_contacts(c, NULL, NULL), NATTER_NOT_LOGGED_IN);
        EXPECT(natter_client_sync_contacts(c, "\xff", NULL), NATTER_INVALID_UTF8);
    }
    /* Presence: set before a login too; offline and unknown values refused. */
    {
        uint32_t availability = 0;
        char mood[8];
        size_t mood_len = 0;
        EXPECT(natter_client_set_presence(c, NATTER_AVAILABILITY_OFFLINE, NULL),
               NATTER_INVALID_ARGUMENT);
        EXPECT(natter_client_set_presence(c, 99, NULL), NATTER_INVALID_ARGUMENT);
        EXPECT(natter_client_set_presence(c, NATTER_AVAILABILITY_AWAY, "\xff"), NATTER_INVALID_UTF8);
        EXPECT(natter_client_set_presence(c, NATTER_AVAILABILITY_AWAY, "lunch break"), NATTER_OK);
        EXPECT(natter_client_get_presence(c, NULL, mood, sizeof mood, &mood_len),
               NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_get_presence(c, &availability, mood, sizeof mood, NULL),
               NATTER_NULL_ARGUMENT);
        EXPECT(natter_client_get_presence(c, &availability, mood, sizeof mood, &mood_len),
               NATTER_BUFFER_TOO_SMALL);
        CHECK(availability == NATTER_AVAILABILITY_AWAY && mood_len == 11);
        EXPECT(natter_client_set_presence(c, NATTER_AVAILABILITY_ONLINE, NULL), NATTER_OK);
        EXPECT(natter_client_set_away_after(c, 60), NATTER_OK);
        EXPECT(natter_client_report_idle(c, 61), NATTER_OK);
        EXPECT(natter_client_get_presence(c, &availability, mood, sizeof mood, &mood_len),
               NATTER_OK);
        CHECK(availability == NATTER_AVAILABILITY_AWAY && mood_len == 0);
        EXPECT(natter_client_report_idle(c, 0), NATTER_OK);
        EXPECT(natter_client_get_presence(c, &availability, mood, sizeof mood, &mood_len),
               NATTER_OK);
        CHECK(availability == NATTER_AVAILABILITY_ONLINE);
    }
    EXPECT(natter_client_stop(c), NATTER_NOT_STARTED);
    EXPECT(natter_client_search(c, "alice", &id), NATTER_NOT_STARTED);
    EXPECT(natter_call_start(c, "alice", &id), NATTER_NOT_STARTED);
    CHECK(id == 0);
    EXPECT(natter_call_answer(c, 1), NATTER_NOT_STARTED);
    EXPECT(natter_call_hang_up(c, 0), NATTER_NOT_STARTED);
    EXPECT(natter_call_set_muted(c, 1, false), NATTER_UNKNOWN_CALL);
    EXPECT(natter_call_set_voice_processing(c, 1, 0), NATTER_UNKNOWN_CALL);
    EXPECT(natter_call_set_voice_processing(c, 1, 64), NATTER_INVALID_ARGUMENT);
    EXPECT(natter_call_set_voice_processing(NULL, 1, 0), NATTER_NULL_ARGUMENT);
    cs.version = NATTER_CALL_STATS_VERSION + 1;
    EXPECT(natter_call_get_stats(c, 0, &cs), NATTER_UNSUPPORTED_VERSION);
    cs.version = NATTER_CALL_STATS_VERSION;
    EXPECT(natter_call_get_stats(c, 0, &cs), NATTER_UNKNOWN_CALL);
    EXPECT(natter_call_get_stats(c, UINT64_MAX, &cs), NATTER_UNKNOWN_CALL);
    EXPECT(natter_call_push_audio(c, 7, pcm, 320), NATTER_UNKNOWN_CALL);
    EXPECT(natter_client_next_event(c, &e), NATTER_NO_EVENT);
    CHECK(e == NULL);
    EXPECT(natter_client_wait_event(c, 20, &e), NATTER_NO_EVENT);
    EXPECT(natter_client_event_fd(c, &fd), NATTER_OK);
    CHECK(fd >= 0);
    EXPECT(natter_client_set_event_callback(c, never_called, NULL), NATTER_OK);
    EXPECT(natter_client_set_event_callback(c, NULL, NULL), NATTER_OK);
    EXPECT(natter_client_free(c), NATTER_OK);
    all_with_client(c, NATTER_INVALID_HANDLE);

    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
