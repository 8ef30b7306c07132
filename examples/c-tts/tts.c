/* tone-tts: a voxmesh TTS actor in C, on another host, written from docs/protocol.md alone.
 *
 * It joins a running mesh over tcp with CURVE (section 5): one DEALER to the router for
 * control (section 1: READY, heartbeats, SPEAK/PAUSE/RESUME/STOP/SESSION_CLOSE), one DEALER
 * to the audio bridge for FRAME/CREDIT. Its "voice" is a tone: 40 ms per byte of text (a
 * 30 ms beep for a letter or digit, silence for anything else), so the length of the audio
 * says how long the text was.
 *
 *   tone-tts --connect tcp://HOST:PORT --key me.key_secret --server-key server.key
 *            [--data tcp://HOST:PORT] [--name tts@HOST]
 *
 * One thread, one zmq_poll() on both sockets whose timeout is the next heartbeat: it sleeps
 * whenever nothing can be sent (no work, paused, or out of credit). */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "msgpack.h"

/* --- the protocol's constants (docs/protocol.md) --------------------------------------- */

#define VERSION "VXM1"
#define MAX_BODY (64 * 1024)            /* section 1: a body is at most 64 KiB */
#define MAX_FRAME_BYTES (MAX_BODY + 1024) /* ZMQ_MAXMSGSIZE on every socket */
#define HEARTBEAT_MS 500
#define LIVENESS 3
#define BACKOFF_MAX_MS 4000
#define INITIAL_CREDIT 16 /* section 5: frames of a new (slot, generation) before any CREDIT */
#define FRAME_SAMPLES 960 /* 20 ms at 48 kHz */
#define FLAG_FIRST 1
#define FLAG_LAST 2

enum {
    READY = 0x01, HEARTBEAT = 0x02, SHUTDOWN = 0x03, GOODBYE = 0x04, HELLO = 0x08,
    SESSION_CLOSE = 0x11, SPEAK = 0x20, PAUSE = 0x21, RESUME = 0x22, STOP = 0x23,
    SPEAK_DONE = 0x26, SPEAK_PROGRESS = 0x29, MODEL_LOAD = 0x40, MODEL_UNLOAD = 0x41,
    MODEL_LIST = 0x42, MODEL_INFO = 0x43, FRAME = 0x50, CREDIT = 0x51,
};

/* Every command id of the table in section 1: a known command we do not serve is counted
 * "unhandled", an unknown one is a protocol error. */
static bool known_command(uint8_t id) {
    return (id >= 0x01 && id <= 0x09) || (id >= 0x10 && id <= 0x15) ||
           (id >= 0x20 && id <= 0x29) || (id >= 0x30 && id <= 0x32) ||
           (id >= 0x40 && id <= 0x43) || id == 0x50 || id == 0x51;
}

/* --- the voice -------------------------------------------------------------------------- */

#define FRAMES_PER_BYTE 2     /* 40 ms of audio for each byte of the text */
#define BEEP_SAMPLES 1440     /* 30 ms of tone, then 10 ms of silence */
#define RAMP_SAMPLES 240      /* 5 ms fade in and out: no clicks */
#define AMPLITUDE 6000.0
#define PI 3.14159265358979323846

static double tone_hz(uint8_t byte) { return 400.0 + 10.0 * (byte % 64); }

static bool voiced(uint8_t byte) { return isalnum(byte) || byte >= 0x80; }

/* Frame k (0-based) of a chunk's audio: little-endian s16 (section 5), whatever the host. */
static void tone_frame(const uint8_t *text, size_t k, uint8_t out[FRAME_SAMPLES * 2]) {
    uint8_t byte = text[k / FRAMES_PER_BYTE];
    int first = (int)(k % FRAMES_PER_BYTE) * FRAME_SAMPLES; /* sample of the byte's 40 ms */
    for (int n = 0; n < FRAME_SAMPLES; n++) {
        int i = first + n;
        long v = 0;
        if (voiced(byte) && i < BEEP_SAMPLES) {
            double env = fmin(1.0, fmin((double)i / RAMP_SAMPLES,
                                        (double)(BEEP_SAMPLES - i) / RAMP_SAMPLES));
            v = lrint(AMPLITUDE * env * sin(2.0 * PI * tone_hz(byte) * i / 48000.0));
        }
        uint16_t u = (uint16_t)(int16_t)v;
        out[2 * n] = (uint8_t)(u & 0xff);
        out[2 * n + 1] = (uint8_t)(u >> 8);
    }
}

/* --- small things ----------------------------------------------------------------------- */

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *actor_name = "tone-tts";

static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", actor_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Named event counts, reported in every heartbeat's info.counters (as the Python actors do). */
enum { C_MALFORMED, C_UNHANDLED, C_STALE, C_UNKNOWN_SESSION, C_FRAMES, C_FRAMES_DROPPED,
       C_SEND_FAILED, C_RECONNECTS, C_CREDITS, C_STALE_CREDIT, C_DROPPED_ON_STOP,
       C_OVER_LIMIT, C_UNTERMINATED, C_SLOT_RECLAIMED, C_COUNT };
static const char *counter_names[C_COUNT] = {
    "malformed", "unhandled", "stale", "unknown_session", "frames", "frames_dropped",
    "send_failed", "reconnects", "credits", "stale_credit", "dropped_on_stop",
    "over_limit", "unterminated_utterances", "slot_reclaimed",
};
static int64_t counters[C_COUNT];

/* Count, and log only the 1st, 2nd, 4th, 8th... time: garbage cannot flood the log. */
static void drop(int counter, const char *detail) {
    int64_t n = ++counters[counter];
    if ((n & (n - 1)) == 0)
        logf_("%s (#%lld): %s", counter_names[counter], (long long)n, detail);
}

/* --- decoding a message body into fields (section 1: strict, unknown fields ignored) ----- */

typedef struct { const char *p; uint32_t n; } str_t;
typedef enum { F_STR, F_INT, F_BOOL, F_MAP } ftype;
typedef struct {
    const char *name;
    ftype type;
    bool required;
    void *dest; /* str_t *, int64_t *, bool *; NULL for a map we only check */
} field;

/* 0 if the body is one map holding every required field with the right type. */
static int decode(const uint8_t *body, size_t len, field *fields, int nfields) {
    mp_reader r = {body, body + len};
    uint32_t entries;
    bool seen[16] = {false};
    if (len > MAX_BODY || nfields > 16 || mp_read_map(&r, &entries) < 0) return -1;
    for (uint32_t e = 0; e < entries; e++) {
        str_t key;
        if (mp_read_str(&r, &key.p, &key.n) < 0) return -1; /* keys are strings */
        int f = 0;
        while (f < nfields && !(strlen(fields[f].name) == key.n &&
                                memcmp(fields[f].name, key.p, key.n) == 0))
            f++;
        if (f == nfields) { /* an extra field: ignored, but it must still be msgpack */
            if (mp_skip(&r) < 0) return -1;
            continue;
        }
        int rc;
        switch (fields[f].type) {
        case F_STR: { str_t *s = fields[f].dest; rc = mp_read_str(&r, &s->p, &s->n); break; }
        case F_INT: rc = mp_read_int(&r, fields[f].dest); break;
        case F_BOOL: rc = mp_read_bool(&r, fields[f].dest); break;
        default: rc = mp_peek(&r) == MP_MAP ? mp_skip(&r) : -1; break;
        }
        if (rc < 0) return -1;
        seen[f] = true;
    }
    if (r.p != r.end) return -1; /* trailing bytes after the map */
    for (int f = 0; f < nfields; f++)
        if (fields[f].required && !seen[f]) return -1;
    return 0;
}

static char *copy_str(str_t s) {
    char *out = malloc(s.n + 1);
    if (out) { memcpy(out, s.p, s.n); out[s.n] = 0; }
    return out;
}

static bool str_is(str_t s, const char *c) { return strlen(c) == s.n && memcmp(c, s.p, s.n) == 0; }

/* --- the sockets ------------------------------------------------------------------------ */

typedef struct {
    char connect[256], data[256], key_file[512], server_key_file[512], name[128], host[128];
    char public_key[41], secret_key[41], server_key[41]; /* z85 text */
} config;

static config cfg;
static void *ctx, *ctl, *dat; /* ctl is NULL while we wait to reconnect */
static int liveness = LIVENESS;
static int64_t next_heartbeat, reconnect_at, backoff_ms = HEARTBEAT_MS;

static bool send_msg(void *sock, uint8_t cmd, const mp_buf *body) {
    if (sock == NULL || body->failed) { counters[C_SEND_FAILED]++; return false; }
    /* section 1's envelope: VXM1, one command byte, the msgpack map. A DEALER never blocks
     * us: ZMQ_DONTWAIT, and a full queue drops (a dead peer must not stall the writer). */
    if (zmq_send(sock, VERSION, 4, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(sock, &cmd, 1, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(sock, body->data, body->len, ZMQ_DONTWAIT) < 0) {
        drop(C_SEND_FAILED, zmq_strerror(errno));
        return false;
    }
    return true;
}

static int setup_socket(void *sock) {
    int linger = 0;
    int64_t maxmsg = MAX_FRAME_BYTES;
    if (zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        /* section 5: a CURVE client; 40-character z85 keys are accepted as they are */
        zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, cfg.server_key, 40) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, cfg.public_key, 40) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, cfg.secret_key, 40)) {
        logf_("socket options: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

/* --- sessions and their queued chunks --------------------------------------------------- */

#define MAX_SESSIONS 1024
#define MAX_QUEUED 4096 /* chunks per session: a flood costs the flooder its chunks */

typedef struct chunk {
    struct chunk *next;
    int64_t epoch, utterance, index, slot, generation;
    bool first, last;
    uint8_t *text;
    size_t len;
} chunk;

typedef struct session {
    struct session *next;
    char *id;
    int64_t epoch;
    bool paused;
    chunk *head, *tail; /* SPEAKs not begun */
    int queued;
    chunk *cur;         /* the chunk being sent; its frames so far: */
    size_t cur_frame;
    bool speaking;      /* an utterance is open (its first frame went out or is due) */
    int64_t utterance, utt_epoch, slot, generation, frames, samples;
    bool opens;         /* the utterance's first SPEAK had first: true */
} session;

static session *sessions;
static int nsessions;

/* Per slot: the count of FRAMEs of (slot, generation) on the data socket, and the credit. */
typedef struct stream {
    struct stream *next;
    int64_t slot, generation, seq, granted;
    char *session;
} stream;

static stream *streams;

static stream *stream_for(int64_t slot) {
    for (stream *st = streams; st; st = st->next)
        if (st->slot == slot) return st;
    return NULL;
}

/* A SPEAK names the slot's generation: a new one (a new session there) starts a new count. */
static void note_stream(int64_t slot, int64_t generation, const char *session_id) {
    stream *st = stream_for(slot);
    if (st && st->generation == generation && st->session && !strcmp(st->session, session_id))
        return;
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st) return;
        st->slot = slot;
        st->next = streams;
        streams = st;
    }
    free(st->session);
    st->session = strdup(session_id);
    st->generation = generation;
    st->seq = 0;
    st->granted = INITIAL_CREDIT;
}

static void free_chunk(chunk *c) {
    if (c) { free(c->text); free(c); }
}

static session *find_session(str_t id) {
    for (session *s = sessions; s; s = s->next)
        if (str_is(id, s->id)) return s;
    return NULL;
}

static session *get_session(str_t id) {
    session *s = find_session(id);
    if (s || nsessions >= MAX_SESSIONS) {
        if (!s) drop(C_OVER_LIMIT, "too many sessions");
        return s;
    }
    s = calloc(1, sizeof *s);
    if (!s || !(s->id = copy_str(id))) { free(s); return NULL; }
    s->next = sessions;
    sessions = s;
    nsessions++;
    return s;
}

static void clear_work(session *s) {
    while (s->head) { chunk *c = s->head; s->head = c->next; free_chunk(c); }
    s->tail = NULL;
    s->queued = 0;
    free_chunk(s->cur);
    s->cur = NULL;
    s->speaking = false;
}

static void forget_session(session *gone) {
    for (session **p = &sessions; *p; p = &(*p)->next) {
        if (*p == gone) {
            *p = gone->next;
            clear_work(gone);
            free(gone->id);
            free(gone);
            nsessions--;
            return;
        }
    }
}

/* Section 5: "STOP: drop everything of that session with an older epoch and adopt the new
 * one". A SPEAK or PAUSE with a newer epoch (we missed its STOP) does the same. */
static void advance(session *s, int64_t epoch) {
    if (s->head || s->cur) counters[C_DROPPED_ON_STOP]++;
    clear_work(s);
    s->epoch = epoch;
    s->paused = false;
}

/* True if a message of this epoch is current for the session (a newer one advances it). */
static bool fence(session *s, int64_t epoch) {
    if (epoch < s->epoch) { counters[C_STALE]++; return false; }
    if (epoch > s->epoch) advance(s, epoch);
    return true;
}

static bool busy(const session *s) { return s->head || s->cur || s->speaking; }

/* --- control out ------------------------------------------------------------------------ */

static void put_info(mp_buf *b) {
    int load = 0;
    for (session *s = sessions; s; s = s->next) load += busy(s);
    int ncounters = 0;
    for (int i = 0; i < C_COUNT; i++) ncounters += counters[i] != 0;
    /* section 5: host, engine, device, voices, default, load, sessions in READY's and every
     * HEARTBEAT's info: the router routes by them and `voxmesh status` shows them */
    mp_map(b, 10);
    mp_str(b, "host"); mp_str(b, cfg.host);
    mp_str(b, "engine"); mp_str(b, "tone");
    mp_str(b, "device"); mp_str(b, "cpu");
    mp_str(b, "voices"); mp_array(b, 1); mp_str(b, "tone:beep");
    mp_str(b, "resident"); mp_array(b, 1); mp_str(b, "tone:beep");
    mp_str(b, "default"); mp_str(b, "tone:beep");
    mp_str(b, "load"); mp_int(b, load);
    mp_str(b, "sessions"); mp_int(b, nsessions);
    mp_str(b, "remote"); mp_bool(b, true);
    mp_str(b, "counters"); mp_map(b, (uint32_t)ncounters);
    for (int i = 0; i < C_COUNT; i++)
        if (counters[i]) { mp_str(b, counter_names[i]); mp_int(b, counters[i]); }
}

static void send_ready(void) {
    uint8_t storage[4096];
    mp_buf b;
    mp_init(&b, storage, sizeof storage);
    /* no token: on tcp the CURVE key is the credential (section 5) */
    mp_map(&b, 4);
    mp_str(&b, "name"); mp_str(&b, cfg.name);
    mp_str(&b, "kind"); mp_str(&b, "tts");
    mp_str(&b, "pid"); mp_int(&b, getpid());
    mp_str(&b, "info"); put_info(&b);
    send_msg(ctl, READY, &b);
}

static void send_heartbeat(void) {
    uint8_t storage[4096];
    mp_buf b;
    mp_init(&b, storage, sizeof storage);
    mp_map(&b, 1);
    mp_str(&b, "info"); put_info(&b);
    send_msg(ctl, HEARTBEAT, &b);
}

static void send_goodbye(void) {
    uint8_t storage[64];
    mp_buf b;
    mp_init(&b, storage, sizeof storage);
    mp_map(&b, 1);
    mp_str(&b, "reason"); mp_str(&b, "stopping");
    send_msg(ctl, GOODBYE, &b);
}

static void send_progress(const session *s, int64_t chunk_index) {
    uint8_t storage[512];
    mp_buf b;
    mp_init(&b, storage, sizeof storage);
    mp_map(&b, 4);
    mp_str(&b, "session"); mp_str(&b, s->id);
    mp_str(&b, "epoch"); mp_int(&b, s->utt_epoch);
    mp_str(&b, "utterance"); mp_int(&b, s->utterance);
    mp_str(&b, "chunk"); mp_int(&b, chunk_index);
    send_msg(ctl, SPEAK_PROGRESS, &b);
}

static void send_done(const session *s, const char *error) {
    uint8_t storage[1024];
    mp_buf b;
    mp_init(&b, storage, sizeof storage);
    mp_map(&b, error ? 5 : 4);
    mp_str(&b, "session"); mp_str(&b, s->id);
    mp_str(&b, "epoch"); mp_int(&b, s->utt_epoch);
    mp_str(&b, "utterance"); mp_int(&b, s->utterance);
    mp_str(&b, "samples"); mp_int(&b, s->samples);
    if (error) { mp_str(&b, "error"); mp_str(&b, error); }
    send_msg(ctl, SPEAK_DONE, &b);
}

/* --- the control link (section 1, "Liveness (Paranoid Pirate)") ------------------------- */

static void ctl_open(void) {
    ctl = zmq_socket(ctx, ZMQ_DEALER);
    if (!ctl || setup_socket(ctl) < 0) {
        logf_("cannot make the control socket");
        exit(1);
    }
    /* a fresh random identity per socket, <name>.<16 hex> as the Python links do */
    char identity[200];
    unsigned char rnd[8];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(rnd, 1, sizeof rnd, f) != sizeof rnd) {
        for (size_t i = 0; i < sizeof rnd; i++) rnd[i] = (unsigned char)(rand() ^ now_ms());
    }
    if (f) fclose(f);
    int n = snprintf(identity, sizeof identity, "%s.", cfg.name);
    for (size_t i = 0; i < sizeof rnd && n + 2 < (int)sizeof identity; i++)
        n += snprintf(identity + n, sizeof identity - (size_t)n, "%02x", rnd[i]);
    zmq_setsockopt(ctl, ZMQ_ROUTING_ID, identity, (size_t)n);
    if (zmq_connect(ctl, cfg.connect) < 0) {
        logf_("cannot connect to %s: %s", cfg.connect, zmq_strerror(errno));
        exit(1);
    }
    liveness = LIVENESS;
    next_heartbeat = now_ms() + HEARTBEAT_MS;
    send_ready(); /* queued until the CURVE handshake is done */
}

static void ctl_close(void) {
    if (ctl) zmq_close(ctl); /* linger 0: whatever was queued is dropped */
    ctl = NULL;
}

/* The router is gone (silent, or it said GOODBYE): a fresh socket after a backoff. */
static void ctl_lost(const char *why) {
    logf_("router %s: reconnecting in %lld ms", why, (long long)backoff_ms);
    ctl_close();
    reconnect_at = now_ms() + backoff_ms;
    backoff_ms = backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff_ms * 2;
}

static void ctl_tick(int64_t now) {
    if (!ctl) {
        if (now >= reconnect_at) { counters[C_RECONNECTS]++; ctl_open(); }
        return;
    }
    if (now < next_heartbeat) return;
    next_heartbeat = now + HEARTBEAT_MS;
    if (--liveness <= 0) ctl_lost("silent");
    else send_heartbeat();
}

static int64_t ctl_due(void) { return ctl ? next_heartbeat : reconnect_at; }

/* --- control in ------------------------------------------------------------------------- */

static void on_speak(const uint8_t *body, size_t len) {
    str_t sid = {0}, text = {0}, voice = {0};
    int64_t slot = 0, epoch = 0, utterance = 0, index = 0, generation = 0;
    bool first = true, last = true;
    field f[] = {
        {"session", F_STR, true, &sid}, {"slot", F_INT, true, &slot},
        {"epoch", F_INT, true, &epoch}, {"utterance", F_INT, true, &utterance},
        {"text", F_STR, true, &text}, {"first", F_BOOL, false, &first},
        {"last", F_BOOL, false, &last}, {"voice", F_STR, false, &voice},
        {"chunk", F_INT, false, &index}, {"generation", F_INT, false, &generation},
    };
    if (decode(body, len, f, 10) < 0) { drop(C_MALFORMED, "bad SPEAK"); return; }
    if (slot < 0 || slot >= 65536) { drop(C_MALFORMED, "SPEAK slot out of range"); return; }
    session *s = get_session(sid);
    if (!s || !fence(s, epoch)) return;
    if (s->queued >= MAX_QUEUED) { drop(C_OVER_LIMIT, "too many chunks queued"); return; }
    chunk *c = calloc(1, sizeof *c);
    if (!c || (text.n && !(c->text = malloc(text.n)))) { free(c); return; }
    if (text.n) memcpy(c->text, text.p, text.n);
    c->len = text.n;
    c->epoch = epoch;
    c->utterance = utterance;
    c->index = index;
    c->slot = slot;
    c->generation = generation;
    c->first = first;
    c->last = last;
    if (s->tail) s->tail->next = c; else s->head = c;
    s->tail = c;
    s->queued++;
    note_stream(slot, generation, s->id);
}

/* PAUSE, RESUME {session, epoch}; STOP {session, epoch, reason*}; SESSION_CLOSE {session,
 * reason*}. */
static void on_turn(uint8_t cmd, const uint8_t *body, size_t len) {
    str_t sid = {0}, reason = {0};
    int64_t epoch = 0;
    field with_epoch[] = {
        {"session", F_STR, true, &sid}, {"epoch", F_INT, true, &epoch},
        {"reason", F_STR, false, &reason},
    };
    field close[] = {{"session", F_STR, true, &sid}, {"reason", F_STR, false, &reason}};
    int rc = cmd == SESSION_CLOSE ? decode(body, len, close, 2)
                                  : decode(body, len, with_epoch, cmd == STOP ? 3 : 2);
    if (rc < 0) { drop(C_MALFORMED, "bad PAUSE/RESUME/STOP/SESSION_CLOSE"); return; }
    session *s = cmd == PAUSE || cmd == STOP ? get_session(sid) : find_session(sid);
    if (!s) { counters[C_UNKNOWN_SESSION]++; return; }
    switch (cmd) {
    case PAUSE: if (fence(s, epoch)) s->paused = true; break;
    case RESUME: if (fence(s, epoch)) s->paused = false; break;
    case STOP: /* epoch is the new epoch: one not above ours is old news */
        if (epoch <= s->epoch) counters[C_STALE]++;
        else advance(s, epoch);
        break;
    case SESSION_CLOSE: forget_session(s); break;
    }
}

/* `voxmesh models load/unload --actor NAME` reach a remote TTS through the router (section
 * 5): answer MODEL_INFO. Our one voice is always resident. */
static void on_model(uint8_t cmd, const uint8_t *body, size_t len) {
    str_t model = {0}, actor = {0};
    field f[] = {{"model", F_STR, true, &model}, {"actor", F_STR, false, &actor}};
    if (decode(body, len, f, cmd == MODEL_LIST ? 0 : 2) < 0) { drop(C_MALFORMED, "bad MODEL_*"); return; }
    const char *error = NULL;
    if (cmd != MODEL_LIST && !str_is(model, "tone:beep") && !str_is(model, "beep"))
        error = "this actor has only the voice tone:beep";
    else if (cmd == MODEL_UNLOAD)
        error = "tone:beep is built in and cannot be unloaded";
    uint8_t storage[512];
    mp_buf b;
    mp_init(&b, storage, sizeof storage);
    mp_map(&b, 4);
    mp_str(&b, "available"); mp_array(&b, 1); mp_str(&b, "tone:beep");
    mp_str(&b, "resident"); mp_array(&b, 1); mp_str(&b, "tone:beep");
    mp_str(&b, "error"); mp_str(&b, error ? error : "");
    mp_str(&b, "actor"); mp_str(&b, cfg.name);
    send_msg(ctl, MODEL_INFO, &b);
}

static void handle_control(uint8_t cmd, const uint8_t *body, size_t len) {
    field none[] = {{"info", F_MAP, false, NULL}};
    switch (cmd) {
    case SPEAK: on_speak(body, len); return;
    case PAUSE: case RESUME: case STOP: case SESSION_CLOSE: on_turn(cmd, body, len); return;
    case HEARTBEAT: /* nothing to answer: it counted as inbound already */
        if (decode(body, len, none, 1) < 0) drop(C_MALFORMED, "bad HEARTBEAT");
        return;
    case HELLO: send_ready(); return; /* the router does not know us (it restarted) */
    case GOODBYE: ctl_lost("said goodbye"); return;
    case SHUTDOWN: stopping = 1; return;
    case MODEL_LOAD: case MODEL_UNLOAD: case MODEL_LIST: on_model(cmd, body, len); return;
    default:
        if (decode(body, len, none, 0) < 0) drop(C_MALFORMED, "bad body");
        else counters[C_UNHANDLED]++;
    }
}

/* One multipart message: exactly VXM1, one command byte, a body (section 1's envelope).
 * Returns the command, or -1 (and counts it) for anything else. */
static int recv_envelope(void *sock, uint8_t *body, size_t *body_len, bool *got) {
    uint8_t parts[3][8];
    size_t lens[3] = {0};
    int nparts = 0;
    int more = 1;
    size_t more_len = sizeof more;
    *got = false;
    while (more) {
        int rc;
        if (nparts < 2) rc = zmq_recv(sock, parts[nparts], sizeof parts[0], ZMQ_DONTWAIT);
        else if (nparts == 2) rc = zmq_recv(sock, body, MAX_BODY, ZMQ_DONTWAIT);
        else rc = zmq_recv(sock, parts[0], 0, ZMQ_DONTWAIT); /* extra frames: discard */
        if (rc < 0) return -1; /* EAGAIN on the first part: nothing waiting */
        *got = true;
        if (nparts < 3) lens[nparts] = (size_t)rc;
        nparts++;
        zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &more_len);
    }
    if (nparts != 3) { drop(C_MALFORMED, "not three frames"); return -1; }
    if (lens[0] != 4 || memcmp(parts[0], VERSION, 4) != 0) { drop(C_MALFORMED, "bad version"); return -1; }
    if (lens[1] != 1 || !known_command(parts[1][0])) { drop(C_MALFORMED, "unknown command"); return -1; }
    if (lens[2] > MAX_BODY) { drop(C_MALFORMED, "body too large"); return -1; }
    *body_len = lens[2];
    return parts[1][0];
}

static uint8_t in_body[MAX_BODY];

static void drain_control(void) {
    for (int n = 0; ctl && n < 1000; n++) {
        size_t len = 0;
        bool got;
        int cmd = recv_envelope(ctl, in_body, &len, &got);
        if (!got) return;
        liveness = LIVENESS; /* any inbound message counts as a heartbeat */
        backoff_ms = HEARTBEAT_MS;
        if (cmd >= 0) handle_control((uint8_t)cmd, in_body, len);
    }
}

static void drain_data(void) {
    for (int n = 0; n < 1000; n++) {
        size_t len = 0;
        bool got;
        int cmd = recv_envelope(dat, in_body, &len, &got);
        if (!got) return;
        if (cmd < 0) continue;
        if (cmd != CREDIT) { counters[C_UNHANDLED]++; continue; }
        int64_t slot = 0, generation = 0, granted = 0, capacity = 0;
        field f[] = {
            {"slot", F_INT, true, &slot}, {"generation", F_INT, true, &generation},
            {"granted", F_INT, true, &granted}, {"capacity", F_INT, false, &capacity},
        };
        if (decode(in_body, len, f, 4) < 0) { drop(C_MALFORMED, "bad CREDIT"); continue; }
        stream *st = stream_for(slot);
        /* a CREDIT for another generation than the one we write is ignored; granted never
         * goes down */
        if (!st || st->generation != generation) { counters[C_STALE_CREDIT]++; continue; }
        counters[C_CREDITS]++;
        if (granted > st->granted) st->granted = granted;
    }
}

/* --- frames out ------------------------------------------------------------------------- */

static uint8_t frame_body[4096];

static bool send_frame(session *s, stream *st, const uint8_t pcm[FRAME_SAMPLES * 2], int flags) {
    mp_buf b;
    mp_init(&b, frame_body, sizeof frame_body);
    mp_map(&b, 8);
    mp_str(&b, "session"); mp_str(&b, s->id);
    mp_str(&b, "slot"); mp_int(&b, s->slot);
    mp_str(&b, "generation"); mp_int(&b, s->generation);
    mp_str(&b, "epoch"); mp_int(&b, s->utt_epoch);
    mp_str(&b, "utterance"); mp_int(&b, s->utterance);
    mp_str(&b, "flags"); mp_int(&b, flags);
    mp_str(&b, "seq"); mp_int(&b, st->seq);
    mp_str(&b, "pcm"); mp_bin(&b, pcm, FRAME_SAMPLES * 2);
    /* seq counts every frame of (slot, generation) without gaps: it advances even if the
     * queue refused this one (as the Python writer does), the bridge counts the gap */
    if (send_msg(dat, FRAME, &b)) counters[C_FRAMES]++;
    else counters[C_FRAMES_DROPPED]++;
    st->seq++;
    s->frames++;
    return true;
}

static void finish(session *s, const char *error) {
    send_done(s, error);
    s->speaking = false;
}

/* Send the session's next frame if it has one and the credit allows; true if it sent. */
static bool pump_session(session *s) {
    static const uint8_t silence[FRAME_SAMPLES * 2];
    uint8_t pcm[FRAME_SAMPLES * 2];
    if (s->paused) return false;
    for (;;) {
        if (!s->cur) {
            chunk *c = s->head;
            if (!c) return false;
            if (s->speaking && c->utterance != s->utterance) {
                /* the router never sent that utterance's last chunk: close it with a
                 * silent last frame, as the Python streamer does */
                stream *st = stream_for(s->slot);
                if (!st || st->generation != s->generation) { s->speaking = false; continue; }
                if (st->seq >= st->granted) return false;
                counters[C_UNTERMINATED]++;
                send_frame(s, st, silence, FLAG_LAST);
                finish(s, "utterance cut short by the next one");
                return true;
            }
            s->head = c->next;
            if (!s->head) s->tail = NULL;
            s->queued--;
            c->next = NULL;
            s->cur = c;
            s->cur_frame = 0;
            if (!s->speaking) {
                s->speaking = true;
                s->utterance = c->utterance;
                s->utt_epoch = c->epoch;
                s->slot = c->slot;
                s->generation = c->generation;
                s->opens = c->first; /* a continuation (first: false) has no FLAG_FIRST */
                s->frames = s->samples = 0;
            }
        }
        chunk *c = s->cur;
        size_t nframes = c->len * FRAMES_PER_BYTE;
        if (nframes == 0 && !c->last) { /* an empty chunk: nothing to send, it is done */
            send_progress(s, c->index);
            free_chunk(c);
            s->cur = NULL;
            continue;
        }
        stream *st = stream_for(s->slot);
        if (!st || st->generation != s->generation) {
            /* the slot went to another session since this SPEAK: never write into it */
            counters[C_SLOT_RECLAIMED]++;
            advance(s, s->epoch);
            return false;
        }
        if (st->seq >= st->granted) return false; /* section 5: never seq >= granted */
        bool final = c->last && (nframes == 0 || s->cur_frame + 1 == nframes);
        int flags = (s->frames == 0 && s->opens ? FLAG_FIRST : 0) | (final ? FLAG_LAST : 0);
        if (nframes == 0) {
            send_frame(s, st, silence, flags); /* an empty last chunk: one silent last frame */
        } else {
            tone_frame(c->text, s->cur_frame, pcm);
            send_frame(s, st, pcm, flags);
            s->samples += FRAME_SAMPLES;
            s->cur_frame++;
        }
        if (nframes == 0 || s->cur_frame == nframes) {
            /* section 5: SPEAK_PROGRESS once the chunk's last FRAME is handed to the data
             * socket, SPEAK_DONE after the utterance's last FRAME */
            send_progress(s, c->index);
            free_chunk(c);
            s->cur = NULL;
            if (final) finish(s, NULL);
        }
        return true;
    }
}

#define PUMP_BATCH 64 /* frames sent before we look at the clock and poll again */

/* Frames of every session, one at a time in turn, serving control before each so a PAUSE
 * or STOP takes effect before the next frame. True if the batch was used up (more may be
 * sendable now: poll without waiting). */
static bool pump(void) {
    static int turn = 0;
    for (int sent = 0; sent < PUMP_BATCH; sent++) {
        drain_control();
        drain_data();
        bool any = false;
        int i = 0;
        for (session *s = sessions; s && !any; s = s->next, i++)
            if (i >= turn && pump_session(s)) { any = true; turn = i + 1; }
        for (session *s = sessions; s && !any && turn > 0; s = s->next)
            if (pump_session(s)) any = true;
        if (!any) { turn = 0; return false; }
    }
    return true;
}

/* --- start ------------------------------------------------------------------------------ */

/* A z85 key out of a ZeroMQ certificate file: the line  KEY = "40 characters". */
static int read_key(const char *path, const char *key, char out[41]) {
    FILE *f = fopen(path, "r");
    char line[512];
    int found = -1;
    if (!f) { logf_("cannot read key file %s: %s", path, strerror(errno)); return -1; }
    while (found < 0 && fgets(line, sizeof line, f)) {
        char *p = line;
        while (isspace((unsigned char)*p)) p++;
        if (strncmp(p, key, strlen(key)) != 0) continue;
        char *q1 = strchr(p, '"'), *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
        if (q1 && q2 && q2 - q1 - 1 == 40) {
            memcpy(out, q1 + 1, 40);
            out[40] = 0;
            found = 0;
        }
    }
    fclose(f);
    if (found < 0) logf_("%s holds no %s (make keys with `voxmesh keys DIR --name NAME`)", path, key);
    return found;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s --connect tcp://HOST:PORT --key NAME.key_secret --server-key server.key\n"
            "          [--data tcp://HOST:PORT (default: the connect port + 1)] [--name tts@HOST]\n",
            argv0);
    exit(2);
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char *dest = NULL;
        size_t size = 0;
        if (!strcmp(argv[i], "--connect")) { dest = cfg.connect; size = sizeof cfg.connect; }
        else if (!strcmp(argv[i], "--data")) { dest = cfg.data; size = sizeof cfg.data; }
        else if (!strcmp(argv[i], "--key")) { dest = cfg.key_file; size = sizeof cfg.key_file; }
        else if (!strcmp(argv[i], "--server-key")) { dest = cfg.server_key_file; size = sizeof cfg.server_key_file; }
        else if (!strcmp(argv[i], "--name")) { dest = cfg.name; size = sizeof cfg.name; }
        else usage(argv[0]);
        if (++i >= argc || strlen(argv[i]) >= size) usage(argv[0]);
        strcpy(dest, argv[i]);
    }
    if (!cfg.connect[0] || !cfg.key_file[0] || !cfg.server_key_file[0]) usage(argv[0]);
    if (gethostname(cfg.host, sizeof cfg.host - 1) < 0) strcpy(cfg.host, "unknown");
    if (!cfg.name[0]) snprintf(cfg.name, sizeof cfg.name, "tts@%.100s", cfg.host);
    if (!cfg.data[0]) { /* section 5: remote.data defaults to the control port + 1 */
        const char *colon = strrchr(cfg.connect, ':');
        char *end;
        long port = colon ? strtol(colon + 1, &end, 10) : -1;
        if (!colon || *end || port <= 0 || port >= 65535) {
            logf_("cannot take a port from %s: give --data", cfg.connect);
            exit(2);
        }
        snprintf(cfg.data, sizeof cfg.data, "%.*s:%ld", (int)(colon - cfg.connect), cfg.connect,
                 port + 1);
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    actor_name = cfg.name;
    if (read_key(cfg.key_file, "public-key", cfg.public_key) < 0 ||
        read_key(cfg.key_file, "secret-key", cfg.secret_key) < 0 ||
        read_key(cfg.server_key_file, "public-key", cfg.server_key) < 0)
        return 2;
    if (!zmq_has("curve")) {
        logf_("this libzmq has no CURVE (build it with libsodium)");
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    ctx = zmq_ctx_new();
    dat = zmq_socket(ctx, ZMQ_DEALER);
    if (!dat || setup_socket(dat) < 0 || zmq_connect(dat, cfg.data) < 0) {
        logf_("cannot connect the data socket to %s: %s", cfg.data, zmq_strerror(errno));
        return 1;
    }
    ctl_open();
    logf_("joining %s (audio to %s)", cfg.connect, cfg.data);

    while (!stopping) {
        bool more = pump();
        int64_t now = now_ms();
        ctl_tick(now);
        long timeout = more ? 0 : (long)(ctl_due() - now_ms());
        if (timeout < 0) timeout = 0;
        zmq_pollitem_t items[2] = {{dat, 0, ZMQ_POLLIN, 0}, {ctl, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, ctl ? 2 : 1, timeout) < 0 && errno != EINTR) {
            logf_("poll: %s", zmq_strerror(errno));
            break;
        }
    }
    logf_("stopping");
    if (ctl) {
        int linger = 200; /* let the GOODBYE out */
        zmq_setsockopt(ctl, ZMQ_LINGER, &linger, sizeof linger);
        send_goodbye();
    }
    ctl_close();
    zmq_close(dat);
    zmq_ctx_term(ctx);
    while (sessions) forget_session(sessions);
    while (streams) { stream *st = streams; streams = st->next; free(st->session); free(st); }
    return 0;
}
