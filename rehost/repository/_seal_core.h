/*
 * Sealing one blob without the GIL: zstd (or a frame of raw blocks), then AES-256-GCM for an
 * encrypted repository. Shared by _sealing.c (many blobs per call) and
 * rehost/replication/_chunkdiff.c (a chunk's changed runs, digested and sealed in one call),
 * so the two write the same layout: Sealer.seal's, which Sealer.open reads.
 */
#ifndef REHOST_SEAL_CORE_H
#define REHOST_SEAL_CORE_H

#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <openssl/evp.h>
#include <sys/random.h>
#include <zstd.h>

/* Compression contexts kept for the next call (making one per call would cost more than a
 * small chunk's compression). Taken and given back while the GIL is held, so no lock. */
#define SPARE_CONTEXTS 8
static ZSTD_CCtx *spare[SPARE_CONTEXTS];
static int spares;

static ZSTD_CCtx *take_cctx(void) { return spares ? spare[--spares] : ZSTD_createCCtx(); }

static void give_cctx(ZSTD_CCtx *cctx)
{
    if (cctx == NULL)
        return;
    if (spares < SPARE_CONTEXTS)
        spare[spares++] = cctx;
    else
        ZSTD_freeCCtx(cctx);
}

#define NONCE_LEN 12
#define TAG_LEN 16

/* AES-256-GCM of ``buf`` in place under a fresh random nonce: ``nonce`` before it and the
 * tag after it, as rehost.repository.crypto.Sealer writes (nonce + ciphertext + tag).
 * Returns 0, or -1 (no randomness, or OpenSSL failed). */
static int encrypt_in_place(EVP_CIPHER_CTX *ctx, const unsigned char *key, unsigned char *nonce,
                            unsigned char *buf, int len, const unsigned char *aad, int aad_len)
{
    int n = 0;
    if (getrandom(nonce, NONCE_LEN, 0) != NONCE_LEN)
        return -1;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
        return -1;
    if (aad_len > 0 && EVP_EncryptUpdate(ctx, NULL, &n, aad, aad_len) != 1)
        return -1;
    if (len > 0 && (EVP_EncryptUpdate(ctx, buf, &n, buf, len) != 1 || n != len))
        return -1;
    if (EVP_EncryptFinal_ex(ctx, buf + len, &n) != 1 || n != 0)
        return -1;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, buf + len) == 1 ? 0 : -1;
}

/* -- stored frames ----------------------------------------------------------------------- */

#define RAW_BLOCK_MAX (128 * 1024) /* Block_Maximum_Size (RFC 8878 §3.1.1.2.4) */

static size_t content_size_bytes(size_t n)
{
    return n < 256 ? 1 : n < 65536 + 256 ? 2 : n <= 0xFFFFFFFFu ? 4 : 8;
}

/* The size of raw_frame()'s frame of ``n`` bytes. */
static size_t raw_frame_size(size_t n)
{
    size_t blocks = n ? (n + RAW_BLOCK_MAX - 1) / RAW_BLOCK_MAX : 1;
    return 4 + 1 + content_size_bytes(n) + 3 * blocks + n;
}

/* A single-segment frame with its content size and no checksum, as libzstd writes one, whose
 * blocks are raw (stored). Returns its size (raw_frame_size(n)). */
static size_t raw_frame(unsigned char *dst, const unsigned char *src, size_t n)
{
    static const unsigned char magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
    unsigned char *p = dst;
    memcpy(p, magic, 4);
    p += 4;
    size_t fcs = content_size_bytes(n);
    unsigned flag = fcs == 1 ? 0 : fcs == 2 ? 1 : fcs == 4 ? 2 : 3;
    *p++ = (unsigned char)(flag << 6 | 1 << 5); /* Single_Segment_flag */
    uint64_t value = fcs == 2 ? (uint64_t)n - 256 : (uint64_t)n;
    for (size_t i = 0; i < fcs; i++)
        *p++ = (unsigned char)(value >> (8 * i));
    size_t left = n;
    do {
        size_t len = left < RAW_BLOCK_MAX ? left : RAW_BLOCK_MAX;
        uint32_t header = (uint32_t)len << 3 | (left == len ? 1u : 0u); /* Raw_Block: type 0 */
        *p++ = (unsigned char)header;
        *p++ = (unsigned char)(header >> 8);
        *p++ = (unsigned char)(header >> 16);
        memcpy(p, src, len);
        p += len;
        src += len;
        left -= len;
    } while (left > 0);
    return (size_t)(p - dst);
}

/* -- one blob ----------------------------------------------------------------------------- */

/* The room seal_into() needs for ``n`` bytes. */
static size_t seal_room(size_t n, int encrypt, int raw)
{
    return (encrypt ? NONCE_LEN + TAG_LEN : 0) + (raw ? raw_frame_size(n) : ZSTD_compressBound(n));
}

/* ``cctx`` set for seal_into(): python-zstandard's ZstdCompressor(level).compress() frames. */
static void seal_level(ZSTD_CCtx *cctx, int level)
{
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0);
}

/* ``n`` bytes at ``src`` sealed into ``dst`` (``room`` bytes, seal_room()): compressed, or a
 * raw frame with ``raw``; with ``ectx`` (set up for AES-256-GCM) and ``key`` encrypted under
 * ``aad``. Returns the sealed size, or 0 and ``*failed`` set. Needs no GIL. */
static size_t seal_into(ZSTD_CCtx *cctx, EVP_CIPHER_CTX *ectx, const unsigned char *key, int raw,
                        const unsigned char *src, size_t n, unsigned char *dst, size_t room,
                        const unsigned char *aad, int aad_len, const char **failed)
{
    size_t head = ectx != NULL ? NONCE_LEN : 0, tail = ectx != NULL ? TAG_LEN : 0;
    size_t packed = raw ? raw_frame(dst + head, src, n) : ZSTD_compress2(cctx, dst + head, room - head - tail, src, n);
    if (ZSTD_isError(packed)) {
        *failed = ZSTD_getErrorName(packed);
        return 0;
    }
    if (ectx != NULL && encrypt_in_place(ectx, key, dst, dst + head, (int)packed, aad, aad_len) < 0) {
        *failed = "AES-256-GCM failed";
        return 0;
    }
    return head + packed + tail;
}

#endif
