/* Keyed BLAKE3 of many inputs in one call (_blake3.c), for _sealing.c. */
#ifndef REHOST_BLAKE3_H
#define REHOST_BLAKE3_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t load32(const uint8_t *p)
{
    uint32_t w;
    memcpy(&w, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap32(w);
#endif
    return w;
}

/* keyed BLAKE3 (64 lowercase hex digits at hex + 64 * i) of each views[i] whose todo[i] is
 * not 0; -1 if out of memory. Needs no GIL. */
int rehost_blake3_keyed_many(const uint32_t key[8], const Py_buffer *views, const char *todo, Py_ssize_t n,
                             char *hex);

#endif
