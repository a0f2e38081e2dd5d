/*
 * Keyed BLAKE3, as blake3-py computes it (rehost.repository.crypto.blob_id; the tests hold the
 * two to the same bytes), written from the BLAKE3 specification: one compression function,
 * chunks of 1 KiB, a binary tree of parents. The full chunks of all of a call's inputs are
 * compressed eight side by side (GCC vector extensions, AVX2 where the CPU has it): as fast as
 * blake3-py on a 4 KiB blob. blake3-py stays the faster on large ones (AVX-512, better loads:
 * 0.16 ms a MiB here against 0.44), so _sealing.c leaves those to it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_blake3.h"

/* -- BLAKE3 ---------------------------------------------------------------------------- */

#define CHUNK_LEN 1024
#define BLOCK_LEN 64
#define CHUNK_START 1u
#define CHUNK_END 2u
#define PARENT 4u
#define ROOT 8u
#define KEYED_HASH 16u

static const uint32_t IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                               0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};

/* the message word order of each of the 7 rounds: the specification's permutation applied
 * 0..6 times to 0..15 */
static const uint8_t SCHEDULE[7][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};


/* One rotation, mixing and round for a word (uint32_t) or for a vector of them (lanes_t). */
#define ROTR(w, c) (((w) >> (c)) | ((w) << (32 - (c))))

#define G(a, b, c, d, x, y)          \
    do {                             \
        a = a + b + (x);             \
        d = ROTR(d ^ a, 16);         \
        c = c + d;                   \
        b = ROTR(b ^ c, 12);         \
        a = a + b + (y);             \
        d = ROTR(d ^ a, 8);          \
        c = c + d;                   \
        b = ROTR(b ^ c, 7);          \
    } while (0)

#define ROUND(s, m, k)                                  \
    do {                                                \
        G(s[0], s[4], s[8], s[12], m[k[0]], m[k[1]]);   \
        G(s[1], s[5], s[9], s[13], m[k[2]], m[k[3]]);   \
        G(s[2], s[6], s[10], s[14], m[k[4]], m[k[5]]);  \
        G(s[3], s[7], s[11], s[15], m[k[6]], m[k[7]]);  \
        G(s[0], s[5], s[10], s[15], m[k[8]], m[k[9]]);  \
        G(s[1], s[6], s[11], s[12], m[k[10]], m[k[11]]); \
        G(s[2], s[7], s[8], s[13], m[k[12]], m[k[13]]); \
        G(s[3], s[4], s[9], s[14], m[k[14]], m[k[15]]); \
    } while (0)

/* The compression function; ``out`` gets the new chaining value (8 words). */
static void compress(const uint32_t cv[8], const uint32_t m[16], uint64_t counter, uint32_t block_len,
                     uint32_t flags, uint32_t out[8])
{
    uint32_t s[16] = {cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],
                      IV[0], IV[1], IV[2], IV[3], (uint32_t)counter, (uint32_t)(counter >> 32),
                      block_len, flags};
    for (int r = 0; r < 7; r++)
        ROUND(s, m, SCHEDULE[r]);
    for (int i = 0; i < 8; i++)
        out[i] = s[i] ^ s[i + 8];
}

static void load_block(const uint8_t *p, size_t len, uint32_t m[16])
{
    uint8_t padded[BLOCK_LEN];
    if (len < BLOCK_LEN) { /* the last block of the input: zero padded */
        memset(padded, 0, sizeof padded);
        if (len)
            memcpy(padded, p, len);
        p = padded;
    }
    for (int i = 0; i < 16; i++)
        m[i] = load32(p + 4 * i);
}

/* What the last compression of a node needs, kept until it is known whether it is the root. */
struct node {
    uint32_t cv[8];
    uint32_t m[16];
    uint64_t counter;
    uint32_t block_len;
    uint32_t flags;
};

/* Every block of a chunk but its last is compressed; the last is left in ``n``. */
static void chunk_node(const uint32_t key[8], const uint8_t *in, size_t len, uint64_t chunk, struct node *n)
{
    uint32_t cv[8];
    memcpy(cv, key, sizeof cv);
    uint32_t start = CHUNK_START;
    while (len > BLOCK_LEN) {
        uint32_t m[16];
        load_block(in, BLOCK_LEN, m);
        compress(cv, m, chunk, BLOCK_LEN, KEYED_HASH | start, cv);
        start = 0;
        in += BLOCK_LEN;
        len -= BLOCK_LEN;
    }
    memcpy(n->cv, cv, sizeof cv);
    load_block(in, len, n->m);
    n->counter = chunk;
    n->block_len = (uint32_t)len;
    n->flags = KEYED_HASH | start | CHUNK_END;
}

static void parent_node(const uint32_t key[8], const uint32_t left[8], const uint32_t right[8], struct node *n)
{
    memcpy(n->cv, key, 32);
    memcpy(n->m, left, 32);
    memcpy(n->m + 8, right, 32);
    n->counter = 0;
    n->block_len = BLOCK_LEN;
    n->flags = KEYED_HASH | PARENT;
}

/* -- many chunks side by side: lane i of every vector is chunk i of a batch -------------- */

#define LANES 8
typedef uint32_t lanes_t __attribute__((vector_size(4 * LANES)));

/* A whole chunk (1 KiB, so never the root: the input has more than one) to be hashed. */
struct chunk_job {
    const uint8_t *in;
    uint64_t counter;
    uint32_t *cv; /* where its chaining value goes */
};

/* The chaining values of full chunks, LANES at a time. Built once per instruction set
 * (target_clones: AVX2 where the CPU has it, SSE2 otherwise), chosen when loaded. */
__attribute__((target_clones("avx2", "default")))
static void chunk_cvs(const uint32_t key[8], const struct chunk_job *jobs, size_t n)
{
    for (size_t at = 0; at < n; at += LANES) {
        const struct chunk_job *lane[LANES];
        for (int l = 0; l < LANES; l++) /* a short batch repeats its first chunk */
            lane[l] = &jobs[at + l < n ? at + l : at];
        lanes_t h[8], lo, hi;
        for (int i = 0; i < 8; i++)
            h[i] = (lanes_t){0} + key[i];
        for (int l = 0; l < LANES; l++) {
            lo[l] = (uint32_t)lane[l]->counter;
            hi[l] = (uint32_t)(lane[l]->counter >> 32);
        }
        for (int b = 0; b < CHUNK_LEN / BLOCK_LEN; b++) {
            lanes_t m[16];
            for (int i = 0; i < 16; i++)
                for (int l = 0; l < LANES; l++)
                    m[i][l] = load32(lane[l]->in + b * BLOCK_LEN + 4 * i);
            uint32_t flags = KEYED_HASH | (b == 0 ? CHUNK_START : 0) | (b == CHUNK_LEN / BLOCK_LEN - 1 ? CHUNK_END : 0);
            lanes_t s[16] = {h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
                             (lanes_t){0} + IV[0], (lanes_t){0} + IV[1], (lanes_t){0} + IV[2],
                             (lanes_t){0} + IV[3], lo, hi, (lanes_t){0} + BLOCK_LEN, (lanes_t){0} + flags};
            for (int r = 0; r < 7; r++)
                ROUND(s, m, SCHEDULE[r]);
            for (int i = 0; i < 8; i++)
                h[i] = s[i] ^ s[i + 8];
        }
        for (size_t l = 0; l < LANES && at + l < n; l++)
            for (int i = 0; i < 8; i++)
                jobs[at + l].cv[i] = h[i][l];
    }
}

static void to_hex(const uint32_t out[8], char hex[64])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        uint8_t b = (uint8_t)(out[i / 4] >> (8 * (i % 4)));
        hex[2 * i] = digits[b >> 4];
        hex[2 * i + 1] = digits[b & 15];
    }
}

static size_t chunks_of(size_t len) { return len ? (len + CHUNK_LEN - 1) / CHUNK_LEN : 1; }

/* keyed BLAKE3 of an input of at most one chunk: its chunk is the root */
static void one_chunk_hex(const uint32_t key[8], const uint8_t *in, size_t len, char hex[64])
{
    struct node n;
    uint32_t out[8];
    chunk_node(key, in, len, 0, &n);
    compress(n.cv, n.m, n.counter, n.block_len, n.flags | ROOT, out);
    to_hex(out, hex);
}

/* keyed BLAKE3 of an input of ``count`` > 1 chunks whose chaining values are ``cvs``: the
 * tree of parents over them, as the specification builds it (each left subtree a power of
 * two chunks, merged as soon as it is complete) */
static void tree_hex(const uint32_t key[8], uint32_t (*cvs)[8], size_t count, char hex[64])
{
    uint32_t stack[64][8];
    int depth = 0;
    for (size_t c = 0; c + 1 < count; c++) {
        uint32_t cv[8];
        memcpy(cv, cvs[c], sizeof cv);
        for (uint64_t total = c + 1; (total & 1) == 0; total >>= 1) {
            struct node p;
            parent_node(key, stack[--depth], cv, &p);
            compress(p.cv, p.m, p.counter, p.block_len, p.flags, cv);
        }
        memcpy(stack[depth++], cv, sizeof cv);
    }
    if (depth == 0) /* count < 2: not called so */
        return;
    struct node n;
    parent_node(key, stack[--depth], cvs[count - 1], &n);
    while (depth > 0) { /* the right edge of the tree, from the bottom up */
        uint32_t cv[8];
        compress(n.cv, n.m, n.counter, n.block_len, n.flags, cv);
        parent_node(key, stack[--depth], cv, &n);
    }
    uint32_t out[8];
    compress(n.cv, n.m, n.counter, n.block_len, n.flags | ROOT, out);
    to_hex(out, hex);
}

/* keyed BLAKE3 (hex) of each input; ``todo[i]`` 0 skips input i. Full chunks of every input
 * are hashed side by side (a 4 KiB blob is four), the rest one at a time. Returns -1 if out
 * of memory. Runs without the GIL. */
int rehost_blake3_keyed_many(const uint32_t key[8], const Py_buffer *views, const char *todo, Py_ssize_t n,
                             char *hex)
{
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (todo[i])
            total += chunks_of((size_t)views[i].len);
    uint32_t (*cvs)[8] = malloc((total ? total : 1) * sizeof *cvs);
    struct chunk_job *jobs = malloc((total ? total : 1) * sizeof *jobs);
    if (cvs == NULL || jobs == NULL) {
        free(cvs);
        free(jobs);
        return -1;
    }
    size_t at = 0, njobs = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!todo[i])
            continue;
        const uint8_t *in = views[i].buf;
        size_t len = (size_t)views[i].len, count = chunks_of(len);
        if (count > 1) {
            for (size_t c = 0; c < count; c++) {
                size_t clen = len - c * CHUNK_LEN < CHUNK_LEN ? len - c * CHUNK_LEN : CHUNK_LEN;
                if (clen == CHUNK_LEN) {
                    jobs[njobs++] = (struct chunk_job){in + c * CHUNK_LEN, c, cvs[at + c]};
                } else { /* a short last chunk */
                    struct node last;
                    chunk_node(key, in + c * CHUNK_LEN, clen, c, &last);
                    compress(last.cv, last.m, last.counter, last.block_len, last.flags, cvs[at + c]);
                }
            }
        }
        at += count;
    }
    if (njobs > 0)
        chunk_cvs(key, jobs, njobs);
    at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!todo[i])
            continue;
        size_t len = (size_t)views[i].len, count = chunks_of(len);
        if (count > 1)
            tree_hex(key, cvs + at, count, hex + 64 * i);
        else
            one_chunk_hex(key, views[i].buf, len, hex + 64 * i);
        at += count;
    }
    free(cvs);
    free(jobs);
    return 0;
}
