/*
 * The block digest loop of _blockhash.c built for AVX2 (chosen at import when the CPU has
 * it): XXH3 picks its vector code when compiled, so the AVX2 build is a second copy of the
 * loop compiled for that target. About 2x the default (SSE2) build on 4 KiB blocks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_blockhash.h"

#if REHOST_HAVE_AVX2
#pragma GCC target("avx2")
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#define REHOST_DIGEST_LOOP rehost_digest_blocks_avx2
#include "_blockhash_loop.h"
#endif
