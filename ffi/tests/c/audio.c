/* Audio devices at run time, from C, with real ALSA devices and no sound card (ALSA's file
 * plugin over its null device; the test that runs this program sets ALSA_CONFIG_PATH and
 * plays the devices natter_a and natter_b at a speaker's pace, and feeds natter_mic with
 * silence at a microphone's). The devices are listed; bob
 * answers alice with his speaker on natter_a and switches it to natter_b mid-call; a device
 * that does not exist is refused with a reason, and a call with the application's audio has
 * no device to switch. Voice processing: on by default with the devices (bob), off with the
 * application's audio (alice) until she turns it on; version-1 statistics still work.
 *
 *   audio NETWORK_FILE DATA_DIR      (a login server must be running)
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "natter.h"
#include "check.h"

static volatile int alsa_lines; /* ALSA's messages that reached the log callback */

static void on_log(void *user_data, uint32_t level, const char *target, const char *message) {
    (void)user_data;
    (void)level;
    (void)message;
    if (strcmp(target, "alsa") == 0) alsa_lines++;
}

static NatterClient *client(const char *network, const char *root, const char *name,
                            uint32_t audio) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    NatterOptions o;
    EXPECT(natter_options_default(&o, NATTER_OPTIONS_VERSION), NATTER_OK);
    o.network_file = network;
    o.data_dir = dir;
    o.listen = "127.0.0.1:0";
    o.audio = audio;
    o.playback_device = "natter_a";
    o.capture_device = "natter_mic";
    o.encoder_complexity = 0;
    NatterClient *c = NULL;
    EXPECT(natter_client_new(&o, &c), NATTER_OK);
    char password[64];
    snprintf(password, sizeof password, "%s's password", name);
    EXPECT(natter_client_register(c, name, password), NATTER_OK);
    EXPECT(natter_client_login(c, name, password), NATTER_OK);
    EXPECT(natter_client_start(c), NATTER_OK);
    return c;
}

/* alice speaks (a 440 Hz tone) for `frames` frames of 20 ms, in real time. */
static void speak(NatterClient *alice, uint64_t call, int frames, int *phase) {
    int16_t pcm[320];
    struct timespec frame = {0, 20 * 1000 * 1000};
    for (int f = 0; f < frames; f++) {
        for (int i = 0; i < 320; i++, (*phase)++)
            pcm[i] = (int16_t)(8000.0 * sin(2.0 * 3.14159265358979 * 440.0 * *phase / 16000.0));
        natter_call_push_audio(alice, call, pcm, 320);
        nanosleep(&frame, NULL);
    }
}

static double now_secs(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* alice speaks until bob has received `frames` more of her frames, for at most 60 s: under
 * valgrind on a loaded machine the call carries far less than real time, and opening a new
 * speaker mid-call has taken more than 10 s. */
static void speak_until_heard(NatterClient *alice, uint64_t call, NatterClient *bob,
                              uint64_t incoming, uint64_t frames, int *phase) {
    NatterCallStats cs;
    cs.version = NATTER_CALL_STATS_VERSION;
    EXPECT(natter_call_get_stats(bob, incoming, &cs), NATTER_OK);
    uint64_t until = cs.frames_received + frames;
    double deadline = now_secs() + 60.0;
    while (cs.frames_received < until && now_secs() < deadline) {
        speak(alice, call, 1, phase);
        EXPECT(natter_call_get_stats(bob, incoming, &cs), NATTER_OK);
    }
    CHECK(cs.frames_received >= until);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: audio NETWORK_FILE DATA_DIR\n");
        return 2;
    }
    EXPECT(natter_set_log_callback(on_log, NULL, NATTER_LOG_DEBUG), NATTER_OK);
    /* The devices: ask how many, then list them. */
    size_t n = 0;
    EXPECT(natter_audio_devices(NULL, 0, &n), NATTER_BUFFER_TOO_SMALL);
    CHECK(n >= 2);
    NatterAudioDevice devices[64];
    EXPECT(natter_audio_devices(devices, 64, &n), NATTER_OK);
    int found = 0;
    for (size_t i = 0; i < n && i < 64; i++)
        if (devices[i].output && (strcmp(devices[i].id, "alsa:natter_a") == 0 ||
                                  strcmp(devices[i].id, "alsa:natter_b") == 0))
            found++;
    CHECK(found == 2);

    NatterClient *alice = client(argv[1], argv[2], "alice", NATTER_AUDIO_APP);
    NatterClient *bob = client(argv[1], argv[2], "bob", NATTER_AUDIO_DEVICES);
    if (!alice || !bob) return 1;
    NatterEvent *e = next_of(alice, NATTER_EVENT_ATTACHED);
    if (e) natter_event_free(e);
    if ((e = next_of(bob, NATTER_EVENT_ATTACHED))) natter_event_free(e);
    uint64_t call = 0, incoming = 0;
    EXPECT(natter_call_start(alice, "bob", &call), NATTER_OK);
    if ((e = next_of(bob, NATTER_EVENT_CALL_INCOMING))) {
        incoming = e->call;
        natter_event_free(e);
    }
    EXPECT(natter_call_answer(bob, incoming), NATTER_OK);
    if ((e = next_of(alice, NATTER_EVENT_CALL_CONNECTED))) natter_event_free(e);
    int phase = 0;
    speak(alice, call, 10, &phase);
    NatterCallStats cs;
    cs.version = NATTER_CALL_STATS_VERSION;
    EXPECT(natter_call_get_stats(bob, incoming, &cs), NATTER_OK);
    CHECK(cs.voice_processing == (NATTER_VOICE_ECHO_CANCELLATION | NATTER_VOICE_NOISE_SUPPRESSION |
                                  NATTER_VOICE_GAIN_CONTROL));
    /* Under valgrind the echo canceller runs about 50 times slower than real time would
     * allow: bob turns it off (what it does is tested in Rust, client/tests/client.rs)
     * before alice's 2 s into natter_a (with it on, a loaded machine played only part of
     * them). */
    EXPECT(natter_call_set_voice_processing(bob, incoming, 0), NATTER_OK);
    speak_until_heard(alice, call, bob, incoming, 100, &phase);
    EXPECT(natter_call_get_stats(alice, call, &cs), NATTER_OK);
    CHECK(cs.voice_processing == 0);
    CHECK(cs.echo_erle_db < 0); /* off: not measured */
    EXPECT(natter_call_set_voice_processing(alice, call, NATTER_VOICE_NOISE_SUPPRESSION),
           NATTER_OK);
    EXPECT(natter_call_set_voice_processing(alice, call, 16), NATTER_INVALID_ARGUMENT);
    /* A version-1 caller gets the version-1 fields and nothing past them. */
    struct {
        NatterCallStats stats;
        char guard[16];
    } old;
    memset(&old, 0x5a, sizeof old);
    old.stats.version = 1;
    EXPECT(natter_call_get_stats(alice, call, &old.stats), NATTER_OK);
    CHECK(old.stats.state == NATTER_CALL_ACTIVE);
    CHECK(((unsigned char *)&old.stats.voice_processing)[0] == 0x5a);
    printf("switching\n");
    fflush(stdout);

    EXPECT(natter_call_set_speaker(bob, incoming, "no-such-speaker"), NATTER_AUDIO_DEVICE_FAILED);
    char why[256];
    size_t why_len = 0;
    EXPECT(natter_last_error_message(why, sizeof why, &why_len), NATTER_OK);
    CHECK(strstr(why, "no-such-speaker") != NULL);
    EXPECT(natter_call_set_speaker(alice, call, "natter_b"), NATTER_NOT_DEVICE_AUDIO);
    EXPECT(natter_call_set_speaker(bob, 424242, "natter_b"), NATTER_UNKNOWN_CALL);
    EXPECT(natter_call_set_speaker(bob, incoming, "natter_b"), NATTER_OK);
    speak_until_heard(alice, call, bob, incoming, 100, &phase);
    EXPECT(natter_call_get_stats(alice, call, &cs), NATTER_OK);
    CHECK(cs.voice_processing == NATTER_VOICE_NOISE_SUPPRESSION);

    EXPECT(natter_call_hang_up(alice, call), NATTER_OK);
    if ((e = next_of(bob, NATTER_EVENT_CALL_ENDED))) natter_event_free(e);
    EXPECT(natter_call_set_speaker(bob, incoming, "natter_a"), NATTER_WRONG_CALL_STATE);
    EXPECT(natter_client_free(alice), NATTER_OK);
    EXPECT(natter_client_free(bob), NATTER_OK);
    EXPECT(natter_set_log_callback(NULL, NULL, NATTER_LOG_OFF), NATTER_OK);
    printf("alsa log lines: %d\n", alsa_lines);
    if (failures) {
        fprintf(stderr, "audio: %d check(s) failed\n", failures);
        return 1;
    }
    printf("audio: all checks passed\n");
    return 0;
}
