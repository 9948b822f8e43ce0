/* libnatter from many C threads at once. Two clients, alice and bob, are created, registered,
 * logged in and started by two threads at the same time. Alice's events are polled through
 * her file descriptor by a thread of their own; bob's come through a callback, which answers
 * his incoming call (calling into the library from the callback thread). Meanwhile two
 * threads hammer both clients with queries and calls on unknown ids, and another creates and
 * frees clients, racing two threads to free each one (exactly one must succeed). Alice then
 * finds bob, calls him, a thread pushes audio into the call while another pulls it out at
 * bob's end, the main thread mutes and holds, a short-lived thread hangs up, and both clients
 * are stopped and freed while the hammering goes on; the hammer threads then see
 * NATTER_INVALID_HANDLE, never a crash.
 *
 *   threads NETWORK_FILE DATA_DIR      (a login server and a super node must be running)
 *
 * The passwords come from the program (the network is a throwaway one).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "natter.h"

static const char *network, *data_root;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int failures;
static int stop_hammering;

#define FAIL(...)                                                                              \
    do {                                                                                       \
        pthread_mutex_lock(&lock);                                                             \
        fprintf(stderr, __VA_ARGS__);                                                          \
        fputc('\n', stderr);                                                                   \
        failures++;                                                                            \
        pthread_mutex_unlock(&lock);                                                           \
    } while (0)

#define OK(call)                                                                               \
    do {                                                                                       \
        NatterResult r_ = (call);                                                              \
        if (r_ != NATTER_OK) FAIL("%s:%d: %s: %s", __FILE__, __LINE__, #call,                  \
                                  natter_result_message(r_));                                  \
    } while (0)

/* What a thread has seen of one client, under `lock`. */
struct peer {
    const char *name;
    NatterClient *c;
    int attached, connected, ended, hold_events;
    int cut_off_while_attached; /* NO_SUPER_NODE events after attaching (issue 16: 5-9 in 12 s) */
    int typed_fields_wrong;     /* structured fields missing or wrong (issue 16) */
    int typed_fields_seen;
    uint64_t call, search;
    uint32_t search_code;
    int started_ok;
};

static struct peer alice = {.name = "alice"}, bob = {.name = "bob"};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* An event whose typed fields are missing or wrong (under `lock`). */
static void typed_wrong(struct peer *p, const NatterEvent *e) {
    p->typed_fields_wrong++;
    fprintf(stderr, "typed fields wrong on %s: kind %d, direction %u, device %s, address %s, "
            "devices %u: %s\n", p->name, (int)e->kind, e->direction, e->device ? e->device : "NULL",
            e->address ? e->address : "NULL", e->devices, e->detail);
}

/* Record an event of `p` (any thread). Bob's callback answers here. */
static void on_event(struct peer *p, const NatterEvent *e) {
    pthread_mutex_lock(&lock);
    switch (e->kind) {
    case NATTER_EVENT_ATTACHED: p->attached = 1; break;
    case NATTER_EVENT_NO_SUPER_NODE:
        if (p->attached) p->cut_off_while_attached++;
        break;
    case NATTER_EVENT_SEARCH_RESULT:
        if (e->search == p->search) {
            p->search_code = e->code;
            /* The devices found, typed: one online device of bob's. */
            NatterSearchDevice d;
            if (e->devices < 1 || natter_event_search_device(e, 0, &d) != NATTER_OK || !d.online ||
                strlen(d.id_text) != 12 || d.super_nodes < 1 ||
                natter_event_search_device(e, e->devices, &d) != NATTER_INVALID_ARGUMENT)
                typed_wrong(p, e);
            p->typed_fields_seen++;
        }
        break;
    case NATTER_EVENT_CALL_INCOMING:
        p->call = e->call;
        if (!e->device || e->direction != NATTER_CALL_DIRECTION_INCOMING) typed_wrong(p, e);
        p->typed_fields_seen++;
        break;
    case NATTER_EVENT_CALL_RINGING:
        if (!e->device || e->direction != NATTER_CALL_DIRECTION_OUTGOING) typed_wrong(p, e);
        p->typed_fields_seen++;
        break;
    case NATTER_EVENT_CALL_PATH_CHANGED:
        if (!e->address || e->direction == NATTER_CALL_DIRECTION_NONE) typed_wrong(p, e);
        p->typed_fields_seen++;
        break;
    case NATTER_EVENT_CALL_CONNECTED: p->connected = 1; break;
    case NATTER_EVENT_CALL_HOLD_CHANGED: p->hold_events++; break;
    case NATTER_EVENT_CALL_ENDED: p->ended = 1; break;
    default: break;
    }
    int answer = e->kind == NATTER_EVENT_CALL_INCOMING;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    if (answer) OK(natter_call_answer(p->c, e->call)); /* from the callback thread */
}

static void bob_callback(void *user_data, const NatterEvent *e) {
    on_event((struct peer *)user_data, e);
}

/* Wait until `*flag` is non-zero, up to `secs`. */
static int wait_flag(const int *flag, double secs, const char *what) {
    double deadline = now_s() + secs;
    pthread_mutex_lock(&lock);
    while (!*flag && now_s() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&changed, &lock, &ts);
    }
    int ok = *flag;
    pthread_mutex_unlock(&lock);
    if (!ok) FAIL("timed out waiting for %s", what);
    return ok;
}

static NatterClient *new_client(const char *name) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", data_root, name);
    NatterOptions o;
    OK(natter_options_default(&o, NATTER_OPTIONS_VERSION));
    o.network_file = network;
    o.data_dir = dir;
    o.listen = "127.0.0.1:0";
    o.audio = NATTER_AUDIO_APP;
    o.encoder_complexity = 0;
    NatterClient *c = NULL;
    OK(natter_client_new(&o, &c));
    return c;
}

/* Create, register, log in and start one client (two of these run at once). */
static void *bring_up(void *arg) {
    struct peer *p = arg;
    char password[64];
    snprintf(password, sizeof password, "%s's password", p->name);
    NatterClient *c = new_client(p->name);
    if (!c) return NULL;
    p->c = c;
    if (p == &bob) OK(natter_client_set_event_callback(c, bob_callback, p));
    NatterResult r = natter_client_register(c, p->name, password);
    if (r != NATTER_OK && r != NATTER_NAME_TAKEN) FAIL("register %s: %s", p->name, natter_result_message(r));
    OK(natter_client_login(c, p->name, password));
    /* A password given is checked, even with a renewable certificate stored (issue 16: a
       wrong one used to renew the certificate and answer OK). */
    NatterResult wrong = natter_client_login(c, p->name, "not the password!");
    if (wrong != NATTER_WRONG_PASSWORD) FAIL("a wrong password gave %s", natter_result_message(wrong));
    OK(natter_client_login(c, p->name, password));
    OK(natter_client_start(c));
    /* Another user on a started client: NATTER_ALREADY_STARTED, as the header says. */
    NatterResult other = natter_client_login(c, p == &bob ? "alice" : "bob", password);
    if (other != NATTER_ALREADY_STARTED) FAIL("another user while started gave %s", natter_result_message(other));
    pthread_mutex_lock(&lock);
    p->started_ok = 1;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Alice's events, through her file descriptor. */
static void *alice_poller(void *arg) {
    (void)arg;
    int fd = -1;
    OK(natter_client_event_fd(alice.c, &fd));
    for (;;) {
        pthread_mutex_lock(&lock);
        int stop = alice.ended && stop_hammering;
        pthread_mutex_unlock(&lock);
        if (stop) break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN, .revents = 0};
        poll(&pfd, 1, 50);
        NatterEvent *e;
        NatterResult r;
        while ((r = natter_client_next_event(alice.c, &e)) == NATTER_OK) {
            on_event(&alice, e);
            OK(natter_event_free(e));
        }
        if (r == NATTER_INVALID_HANDLE) break; /* freed by the main thread */
        if (r != NATTER_NO_EVENT) FAIL("next_event: %s", natter_result_message(r));
    }
    return NULL;
}

static unsigned long hammered;

/* Queries and nonsense on both clients, until told to stop; the handles go stale on the way. */
static void *hammer(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    unsigned long n = 0;
    for (;;) {
        pthread_mutex_lock(&lock);
        int stop = stop_hammering;
        pthread_mutex_unlock(&lock);
        if (stop) break;
        NatterClient *targets[2] = {alice.c, bob.c};
        for (int i = 0; i < 2; i++) {
            NatterClient *c = targets[i];
            NatterNodeState st;
            st.version = NATTER_NODE_STATE_VERSION;
            NatterResult r = natter_client_get_state(c, &st);
            if (r != NATTER_OK && r != NATTER_INVALID_HANDLE) FAIL("get_state: %s", natter_result_message(r));
            size_t len = 0;
            r = natter_client_describe(c, NULL, 0, &len);
            if (r != NATTER_BUFFER_TOO_SMALL && r != NATTER_INVALID_HANDLE) FAIL("describe: %s", natter_result_message(r));
            if (r == NATTER_BUFFER_TOO_SMALL) {
                char *buf = malloc(len + 1);
                /* The text may have grown meanwhile: too small is fine. */
                r = natter_client_describe(c, buf, len + 1, &len);
                if (r != NATTER_OK && r != NATTER_BUFFER_TOO_SMALL && r != NATTER_INVALID_HANDLE)
                    FAIL("describe: %s", natter_result_message(r));
                free(buf);
            }
            seed = seed * 1103515245u + 12345u;
            uint64_t bogus = 1000 + seed % 1000;
            NatterCallStats cs;
            cs.version = NATTER_CALL_STATS_VERSION;
            r = natter_call_get_stats(c, bogus, &cs);
            if (r != NATTER_UNKNOWN_CALL && r != NATTER_INVALID_HANDLE) FAIL("get_stats: %s", natter_result_message(r));
            int16_t pcm[160] = {0};
            r = natter_call_push_audio(c, bogus, pcm, 160);
            if (r != NATTER_UNKNOWN_CALL && r != NATTER_INVALID_HANDLE) FAIL("push: %s", natter_result_message(r));
            r = natter_call_hold(c, bogus);
            if (r != NATTER_UNKNOWN_CALL && r != NATTER_NOT_STARTED && r != NATTER_INVALID_HANDLE)
                FAIL("hold: %s", natter_result_message(r));
        }
        n++;
        sleep_ms(2);
    }
    pthread_mutex_lock(&lock);
    hammered += n;
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Free `arg` (a client); count who succeeded. */
static int free_wins;
static void *free_it(void *arg) {
    NatterResult r = natter_client_free((NatterClient *)arg);
    pthread_mutex_lock(&lock);
    if (r == NATTER_OK) free_wins++;
    else if (r != NATTER_INVALID_HANDLE) {
        fprintf(stderr, "free: %s\n", natter_result_message(r));
        failures++;
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Create clients and free each from two threads at once. */
static void *churn(void *arg) {
    (void)arg;
    int rounds = 0;
    for (; rounds < 20; rounds++) {
        pthread_mutex_lock(&lock);
        int stop = stop_hammering;
        pthread_mutex_unlock(&lock);
        if (stop) break;
        NatterClient *c = new_client("churn");
        if (!c) break;
        int fd;
        OK(natter_client_event_fd(c, &fd));
        OK(natter_client_set_event_callback(c, bob_callback, &bob));
        pthread_t t1, t2;
        pthread_create(&t1, NULL, free_it, c);
        pthread_create(&t2, NULL, free_it, c);
        pthread_join(t1, NULL);
        pthread_join(t2, NULL);
        if (natter_client_start(c) != NATTER_INVALID_HANDLE) FAIL("a freed client still answers");
    }
    pthread_mutex_lock(&lock);
    if (free_wins != rounds) FAIL("%d rounds of racing frees, %d succeeded", rounds, free_wins);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *pusher(void *arg) {
    (void)arg;
    int16_t frame[320];
    for (int i = 0; i < 320; i++) frame[i] = (int16_t)((i % 40 < 20) ? 8000 : -8000);
    for (int n = 0; n < 100; n++) { /* 2 s */
        NatterResult r = natter_call_push_audio(alice.c, alice.call, frame, 320);
        if (r != NATTER_OK) FAIL("push: %s", natter_result_message(r));
        sleep_ms(20);
    }
    return NULL;
}

static unsigned long pulled_real;

static void *puller(void *arg) {
    (void)arg;
    int16_t frame[320];
    for (int n = 0; n < 100; n++) {
        size_t real = 0;
        NatterResult r = natter_call_pull_audio(bob.c, bob.call, frame, 320, &real);
        if (r != NATTER_OK) FAIL("pull: %s", natter_result_message(r));
        pthread_mutex_lock(&lock);
        pulled_real += real;
        pthread_mutex_unlock(&lock);
        sleep_ms(20);
    }
    return NULL;
}

static void *hang_up(void *arg) {
    (void)arg;
    OK(natter_call_hang_up(alice.c, alice.call));
    return NULL;
}

static void *stopper(void *arg) {
    OK(natter_client_stop((NatterClient *)arg));
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s NETWORK_FILE DATA_DIR\n", argv[0]);
        return 2;
    }
    network = argv[1];
    data_root = argv[2];
    setvbuf(stdout, NULL, _IOLBF, 0);

    pthread_t up[2], poller, hammers[2], churner;
    pthread_create(&up[0], NULL, bring_up, &alice);
    pthread_create(&up[1], NULL, bring_up, &bob);
    pthread_join(up[0], NULL);
    pthread_join(up[1], NULL);
    if (!alice.started_ok || !bob.started_ok) {
        FAIL("the clients did not start");
        goto out;
    }
    printf("both clients started\n");
    pthread_create(&poller, NULL, alice_poller, NULL);
    pthread_create(&hammers[0], NULL, hammer, (void *)1);
    pthread_create(&hammers[1], NULL, hammer, (void *)2);
    pthread_create(&churner, NULL, churn, NULL);

    if (!wait_flag(&alice.attached, 60, "alice attached") || !wait_flag(&bob.attached, 60, "bob attached"))
        goto join;
    printf("both attached\n");

    /* Alice looks bob up until his presence is published. */
    for (double give_up = now_s() + 30;;) {
        uint64_t id;
        pthread_mutex_lock(&lock);
        alice.search_code = 0;
        pthread_mutex_unlock(&lock);
        OK(natter_client_search(alice.c, "bob", &id));
        pthread_mutex_lock(&lock);
        alice.search = id;
        pthread_mutex_unlock(&lock);
        if (!wait_flag((const int *)&alice.search_code, 15, "a search result")) goto join;
        if (alice.search_code == NATTER_SEARCH_FOUND) break;
        if (now_s() > give_up) {
            FAIL("bob never found");
            goto join;
        }
        sleep_ms(300);
    }
    printf("alice found bob\n");

    uint64_t call = 0;
    OK(natter_call_start(alice.c, "bob", &call));
    pthread_mutex_lock(&lock);
    alice.call = call;
    pthread_mutex_unlock(&lock);
    if (!wait_flag(&alice.connected, 60, "alice connected") || !wait_flag(&bob.connected, 60, "bob connected"))
        goto join;
    printf("call connected\n");

    pthread_t push, pull;
    pthread_create(&push, NULL, pusher, NULL);
    pthread_create(&pull, NULL, puller, NULL);
    OK(natter_call_set_muted(alice.c, call, true));
    OK(natter_call_set_muted(alice.c, call, false));
    OK(natter_call_hold(alice.c, call));
    OK(natter_call_resume(alice.c, call));
    pthread_join(push, NULL);
    pthread_join(pull, NULL);
    printf("bob heard %lu samples\n", pulled_real);
    if (pulled_real == 0) FAIL("no audio reached bob");

    NatterCallStats cs;
    cs.version = NATTER_CALL_STATS_VERSION;
    OK(natter_call_get_stats(alice.c, call, &cs));
    if (cs.state != NATTER_CALL_ACTIVE) FAIL("alice's call is in state %u", (unsigned)cs.state);

    pthread_t hanger;
    pthread_create(&hanger, NULL, hang_up, NULL);
    pthread_join(hanger, NULL);
    if (!wait_flag(&alice.ended, 30, "alice's call ended") || !wait_flag(&bob.ended, 30, "bob's call ended"))
        goto join;
    printf("call ended\n");
    /* Attached to the network's only super node the whole time: never "no super node". */
    pthread_mutex_lock(&lock);
    int cut_off = alice.cut_off_while_attached + bob.cut_off_while_attached;
    pthread_mutex_unlock(&lock);
    if (cut_off) FAIL("NATTER_EVENT_NO_SUPER_NODE %d times while attached", cut_off);
    /* Typed event fields: alice's search result and ringing (polled), bob's incoming call
       (callback), both sides' path events. */
    pthread_mutex_lock(&lock);
    int wrong = alice.typed_fields_wrong + bob.typed_fields_wrong;
    int seen_a = alice.typed_fields_seen, seen_b = bob.typed_fields_seen;
    pthread_mutex_unlock(&lock);
    if (wrong || seen_a < 3 || seen_b < 2)
        FAIL("typed event fields: %d wrong; seen %d (alice), %d (bob)", wrong, seen_a, seen_b);

join:
    /* Stop alice from another thread and free both while the hammers still run. */
    {
        pthread_t s;
        pthread_create(&s, NULL, stopper, alice.c);
        pthread_join(s, NULL);
    }
    OK(natter_client_free(alice.c));
    OK(natter_client_free(bob.c));
    sleep_ms(50);
    pthread_mutex_lock(&lock);
    stop_hammering = 1;
    alice.ended = 1;
    pthread_mutex_unlock(&lock);
    pthread_join(poller, NULL);
    pthread_join(hammers[0], NULL);
    pthread_join(hammers[1], NULL);
    pthread_join(churner, NULL);
    printf("%lu hammer rounds, %d racing frees won\n", hammered, free_wins);
out:
    printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
