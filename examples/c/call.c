/* call.c: a whole call through libnatter. Log in, call a user (or wait for their call and
 * answer it), play a WAV file into the call, save what the other side says to a WAV file,
 * hang up (or wait for the other side to), print the call's statistics.
 *
 * The application owns the audio here (NATTER_AUDIO_APP): every 20 ms it pushes one frame
 * of the WAV file and pulls one frame to record, as an audio callback would. Events come
 * from the client's file descriptor, waited on with poll(2) in the same loop.
 *
 * Build against the installed library:
 *   cc -std=c99 -Wall -Wextra -Werror call.c $(pkg-config --cflags --libs natter) -o natter-call
 *
 * Run (the network file comes from `natter login-server`):
 *   natter-call --network network.toml --data alice-data --user alice --register \
 *               --answer --play speech.wav --record alice-heard.wav
 *   natter-call --network network.toml --data bob-data --user bob --register \
 *               --call alice --seconds 3 --play speech.wav --record bob-heard.wav
 *
 * The password comes from NATTER_PASSWORD (or --password); with --register the account is
 * created first (an existing one is fine). --complexity lowers the Opus encoder's complexity
 * (0-10, default 10) for slow machines. --min-frames N keeps the caller in the call past
 * --seconds until N frames went each way (a loaded machine may fall behind real time).
 * Exit status 0 when the call connected, audio arrived, and the call ended cleanly.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "natter.h"

struct args {
    const char *network, *data, *user, *password, *listen;
    const char *call, *play, *record;
    int answer, do_register;
    double seconds, timeout;
    int complexity;
    unsigned long long min_frames;
};

struct pcm {
    int16_t *samples;
    size_t len, cap;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
    double left = t - now_s();
    if (left <= 0) return;
    struct timespec ts;
    ts.tv_sec = (time_t)left;
    ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static int fail(const char *what, NatterResult r) {
    fprintf(stderr, "natter-call: %s: %s\n", what, natter_result_message(r));
    return 0;
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Read a 16-bit mono PCM WAV file at `rate` Hz. */
static int read_wav(const char *path, uint32_t rate, struct pcm *out) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 0;
    }
    unsigned char hdr[12], chunk[8], fmt[16];
    int ok = 0, have_fmt = 0;
    if (fread(hdr, 1, 12, f) != 12 || memcmp(hdr, "RIFF", 4) || memcmp(hdr + 8, "WAVE", 4)) {
        fprintf(stderr, "%s: not a WAV file\n", path);
        goto done;
    }
    while (fread(chunk, 1, 8, f) == 8) {
        uint32_t size = rd32(chunk + 4);
        if (!memcmp(chunk, "fmt ", 4) && size >= 16) {
            if (fread(fmt, 1, 16, f) != 16) goto done;
            if (rd16(fmt) != 1 || rd16(fmt + 2) != 1 || rd32(fmt + 4) != rate ||
                rd16(fmt + 14) != 16) {
                fprintf(stderr, "%s: need 16-bit mono PCM at %u Hz\n", path, (unsigned)rate);
                goto done;
            }
            have_fmt = 1;
            if (fseek(f, (long)(size - 16 + (size & 1)), SEEK_CUR)) goto done;
        } else if (!memcmp(chunk, "data", 4) && have_fmt) {
            out->len = size / 2;
            out->cap = out->len;
            out->samples = malloc(out->len * sizeof(int16_t) + 1);
            if (!out->samples) goto done;
            unsigned char *raw = (unsigned char *)out->samples;
            if (fread(raw, 1, out->len * 2, f) != out->len * 2) goto done;
            for (size_t i = 0; i < out->len; i++) /* little-endian on disk */
                out->samples[i] = (int16_t)rd16(raw + 2 * i);
            ok = 1;
            goto done;
        } else if (fseek(f, (long)(size + (size & 1)), SEEK_CUR)) {
            goto done;
        }
    }
    fprintf(stderr, "%s: no audio data\n", path);
done:
    fclose(f);
    if (!ok) {
        free(out->samples);
        out->samples = NULL;
    }
    return ok;
}

static void wr32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void wr16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static int write_wav(const char *path, uint32_t rate, const struct pcm *in) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return 0;
    }
    unsigned char h[44];
    uint32_t bytes = (uint32_t)(in->len * 2);
    memcpy(h, "RIFF", 4);
    wr32(h + 4, 36 + bytes);
    memcpy(h + 8, "WAVEfmt ", 8);
    wr32(h + 16, 16);
    wr16(h + 20, 1);
    wr16(h + 22, 1);
    wr32(h + 24, rate);
    wr32(h + 28, rate * 2);
    wr16(h + 32, 2);
    wr16(h + 34, 16);
    memcpy(h + 36, "data", 4);
    wr32(h + 40, bytes);
    int ok = fwrite(h, 1, 44, f) == 44;
    for (size_t i = 0; ok && i < in->len; i++) {
        unsigned char s[2];
        wr16(s, (uint16_t)in->samples[i]);
        ok = fwrite(s, 1, 2, f) == 2;
    }
    return fclose(f) == 0 && ok;
}

static int append(struct pcm *p, const int16_t *s, size_t n) {
    if (p->len + n > p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16000;
        while (cap < p->len + n) cap *= 2;
        int16_t *grown = realloc(p->samples, cap * sizeof(int16_t));
        if (!grown) return 0;
        p->samples = grown;
        p->cap = cap;
    }
    memcpy(p->samples + p->len, s, n * sizeof(int16_t));
    p->len += n;
    return 1;
}

/* What the event loop has seen of the call. */
struct call_view {
    uint64_t id;
    int incoming, connected, ended;
    uint32_t end_reason;
};

static const char *path_name(uint32_t k) {
    switch (k) {
    case NATTER_PATH_DIRECT_LAN: return "direct-lan";
    case NATTER_PATH_DIRECT: return "direct";
    case NATTER_PATH_RELAY_UDP: return "relay-udp";
    case NATTER_PATH_RELAY_TCP: return "relay-tcp";
    default: return "none";
    }
}

/* Take every waiting event (waiting up to `wait_ms` for the first) and update `v`. Returns
 * the number of super nodes attached when an attach event came, else -1. */
static int pump(NatterClient *c, int fd, int wait_ms, struct call_view *v) {
    int attached = -1;
    struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
    if (wait_ms > 0 && poll(&p, 1, wait_ms) < 0 && errno != EINTR) perror("poll");
    NatterEvent *e;
    while (natter_client_next_event(c, &e) == NATTER_OK) {
        switch (e->kind) {
        case NATTER_EVENT_ATTACHED:
            printf("attached to super node %s\n", e->detail);
            attached = (int)e->count;
            break;
        case NATTER_EVENT_NAT_DETECTED: printf("NAT: %s\n", e->detail); break;
        case NATTER_EVENT_CALL_INCOMING:
            printf("incoming call from %s\n", e->user);
            if (!v->id) {
                v->id = e->call;
                v->incoming = 1;
            }
            break;
        case NATTER_EVENT_CALL_RINGING: printf("ringing\n"); break;
        case NATTER_EVENT_CALL_CONNECTED:
            if (e->call == v->id) {
                printf("call connected to %s\n", e->user);
                v->connected = 1;
            }
            break;
        case NATTER_EVENT_CALL_PATH_CHANGED:
            printf("call path %s\n", path_name(e->code));
            break;
        case NATTER_EVENT_AUDIO_ERROR: printf("audio: %s\n", e->detail); break;
        case NATTER_EVENT_CALL_ENDED:
            if (e->call == v->id) {
                printf("call ended: %s (reason %u)\n", e->detail, (unsigned)e->code);
                v->ended = 1;
                v->end_reason = e->code;
            }
            break;
        default: break;
        }
        natter_event_free(e);
    }
    return attached;
}

/* Whether at least `min` frames went each way on the call so far. */
static int frames_each_way(NatterClient *c, uint64_t call, unsigned long long min) {
    if (min == 0) return 1;
    NatterCallStats s;
    s.version = NATTER_CALL_STATS_VERSION;
    return natter_call_get_stats(c, call, &s) == NATTER_OK && s.frames_sent >= min &&
           s.frames_received >= min;
}

static int parse(int argc, char **argv, struct args *a) {
    memset(a, 0, sizeof *a);
    a->password = getenv("NATTER_PASSWORD");
    a->seconds = 3;
    a->timeout = 60;
    a->complexity = -1;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--answer")) a->answer = 1;
        else if (!strcmp(k, "--register")) a->do_register = 1;
        else if (!val) return 0;
        else {
            i++;
            if (!strcmp(k, "--network")) a->network = val;
            else if (!strcmp(k, "--data")) a->data = val;
            else if (!strcmp(k, "--user")) a->user = val;
            else if (!strcmp(k, "--password")) a->password = val;
            else if (!strcmp(k, "--listen")) a->listen = val;
            else if (!strcmp(k, "--call")) a->call = val;
            else if (!strcmp(k, "--play")) a->play = val;
            else if (!strcmp(k, "--record")) a->record = val;
            else if (!strcmp(k, "--seconds")) a->seconds = atof(val);
            else if (!strcmp(k, "--timeout")) a->timeout = atof(val);
            else if (!strcmp(k, "--complexity")) a->complexity = atoi(val);
            else if (!strcmp(k, "--min-frames")) a->min_frames = strtoull(val, NULL, 10);
            else return 0;
        }
    }
    return a->network && a->data && a->user && (a->call || a->answer) && a->play && a->record;
}

int main(int argc, char **argv) {
    struct args a;
    if (!parse(argc, argv, &a)) {
        fprintf(stderr,
                "usage: %s --network FILE --data DIR --user NAME [--password PW] [--register]\n"
                "          (--call USER [--seconds S] | --answer) --play IN.wav --record OUT.wav\n"
                "          [--listen IP:PORT] [--timeout S] [--complexity 0-10] [--min-frames N]\n",
                argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const uint32_t rate = natter_audio_sample_rate();
    const size_t frame = natter_audio_frame_samples();
    struct pcm in = {0}, heard = {0};
    if (!read_wav(a.play, rate, &in)) return 1;

    int ok = 0;
    NatterResult r;
    NatterClient *c = NULL;
    NatterOptions o;
    if ((r = natter_options_default(&o, NATTER_OPTIONS_VERSION)) != NATTER_OK) {
        fail("options", r);
        goto out;
    }
    o.network_file = a.network;
    o.data_dir = a.data;
    o.listen = a.listen;
    o.audio = NATTER_AUDIO_APP;
    if (a.complexity >= 0) o.encoder_complexity = (uint32_t)a.complexity;
    if ((r = natter_client_new(&o, &c)) != NATTER_OK) {
        fail("creating the client", r);
        goto out;
    }
    if (a.do_register) {
        r = natter_client_register(c, a.user, a.password ? a.password : "");
        if (r == NATTER_OK) printf("registered %s\n", a.user);
        else if (r != NATTER_NAME_TAKEN) {
            fail("registering", r);
            goto out;
        }
    }
    if ((r = natter_client_login(c, a.user, a.password)) != NATTER_OK) {
        fail("logging in", r);
        goto out;
    }
    printf("logged in as %s\n", a.user);
    if ((r = natter_client_start(c)) != NATTER_OK) {
        fail("starting", r);
        goto out;
    }
    int fd;
    if ((r = natter_client_event_fd(c, &fd)) != NATTER_OK) {
        fail("event fd", r);
        goto out;
    }

    const double deadline = now_s() + a.timeout;
    struct call_view v = {0};
    while (pump(c, fd, 100, &v) < 1) {
        if (now_s() > deadline) {
            fprintf(stderr, "natter-call: no super node within %.0f s\n", a.timeout);
            goto out;
        }
    }
    printf("ready\n");

    /* Call (again while the callee is not yet findable in the index), or wait for a call. */
    while (!v.connected) {
        if (now_s() > deadline) {
            fprintf(stderr, "natter-call: no call connected within %.0f s\n", a.timeout);
            goto out;
        }
        if (a.call && !v.id) {
            if ((r = natter_call_start(c, a.call, &v.id)) != NATTER_OK) {
                fail("calling", r);
                goto out;
            }
            printf("calling %s\n", a.call);
        }
        if (a.answer && v.incoming) {
            if ((r = natter_call_answer(c, v.id)) != NATTER_OK) {
                fail("answering", r);
                goto out;
            }
            printf("answered\n");
            v.incoming = 0;
        }
        pump(c, fd, 100, &v);
        if (v.ended) {
            int retry = a.call && (v.end_reason == NATTER_END_USER_NOT_FOUND ||
                                   v.end_reason == NATTER_END_USER_OFFLINE ||
                                   v.end_reason == NATTER_END_SEARCH_UNAVAILABLE);
            if (!retry) goto out;
            memset(&v, 0, sizeof v);
            sleep_until(now_s() + 0.5);
        }
    }

    /* The audio loop: one 20 ms frame out and one in, on a steady clock. */
    int16_t *buf = malloc(frame * sizeof(int16_t));
    if (!buf) goto out;
    const double started = now_s();
    double next = started;
    size_t pos = 0;
    int hung_up = 0;
    while (!v.ended && now_s() < deadline) {
        const int16_t *src = buf;
        if (pos + frame <= in.len) {
            src = in.samples + pos;
            pos += frame;
        } else {
            memset(buf, 0, frame * sizeof(int16_t));
        }
        r = natter_call_push_audio(c, v.id, src, frame);
        if (r == NATTER_OK) {
            size_t got = 0;
            r = natter_call_pull_audio(c, v.id, buf, frame, &got);
            if (r == NATTER_OK && !append(&heard, buf, frame)) break;
        }
        if (r != NATTER_OK && r != NATTER_NO_AUDIO) fail("audio", r);
        if (a.call && !hung_up && now_s() - started >= a.seconds &&
            frames_each_way(c, v.id, a.min_frames)) {
            if ((r = natter_call_hang_up(c, v.id)) != NATTER_OK) fail("hanging up", r);
            printf("hung up\n");
            hung_up = 1;
        }
        next += (double)frame / rate;
        double wait = next - now_s();
        pump(c, fd, wait > 0 ? (int)(wait * 1000) : 0, &v);
        sleep_until(next);
    }
    free(buf);

    NatterCallStats s;
    s.version = NATTER_CALL_STATS_VERSION;
    if ((r = natter_call_get_stats(c, v.id, &s)) == NATTER_OK) {
        printf("call stats: %.1f s connected, path %s, %llu frames sent, %llu received, "
               "%.0f ms concealed, MOS %.2f\n",
               (double)s.duration_ms / 1000, path_name(s.path),
               (unsigned long long)s.frames_sent, (unsigned long long)s.frames_received,
               s.concealed_ms, s.mos);
        ok = v.ended && s.frames_received > 0 &&
             (s.end_reason == NATTER_END_HUNG_UP_LOCAL || s.end_reason == NATTER_END_HUNG_UP_REMOTE);
    } else {
        fail("call statistics", r);
    }
    if (write_wav(a.record, rate, &heard))
        printf("saved %.1f s of what the other side sent to %s\n", (double)heard.len / rate,
               a.record);
    else
        ok = 0;

out:
    if (c && (r = natter_client_free(c)) != NATTER_OK) fail("freeing", r);
    free(in.samples);
    free(heard.samples);
    printf("%s\n", ok ? "done" : "failed");
    return ok ? 0 : 1;
}
