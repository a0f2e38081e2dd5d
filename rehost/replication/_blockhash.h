/* Shared by the two builds of the block digest loop (see _blockhash.c) and their users
 * (_blockhash.c, _chunkdiff.c). */
#ifndef REHOST_BLOCKHASH_H
#define REHOST_BLOCKHASH_H

#define REHOST_BLOCK 4096

#if defined(__x86_64__) && defined(__GNUC__)
#define REHOST_HAVE_AVX2 1
void rehost_digest_blocks_avx2(const unsigned char *src, Py_ssize_t len, unsigned char *dst);
#else
#define REHOST_HAVE_AVX2 0
#endif

void rehost_digest_blocks_default(const unsigned char *src, Py_ssize_t len, unsigned char *dst);

typedef void (*rehost_digest_fn)(const unsigned char *, Py_ssize_t, unsigned char *);

/* The fastest build this CPU runs (_blockhash_default.c); its name ("avx2", "default") in *name. */
rehost_digest_fn rehost_digest_pick(const char **name);

#endif
