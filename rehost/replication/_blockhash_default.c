/*
 * The block digest loop of _blockhash.c in its default build (SSE2 on x86-64), and the choice
 * between it and the AVX2 build (_blockhash_avx2.c) made once the CPU is known. A file of its
 * own so that every module digesting blocks (_blockhash.c, _chunkdiff.c) links the same loops.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "_blockhash.h"

#define REHOST_DIGEST_LOOP rehost_digest_blocks_default
#include "_blockhash_loop.h"

rehost_digest_fn rehost_digest_pick(const char **name)
{
#if REHOST_HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        *name = "avx2";
        return rehost_digest_blocks_avx2;
    }
#endif
    *name = "default";
    return rehost_digest_blocks_default;
}
