/*
 * The block digest loop, compiled once per target: _blockhash.c and _blockhash_avx2.c each
 * include xxhash.h (XXH3 picks its vector code when compiled) and then this file, with
 * REHOST_DIGEST_LOOP set to the function's name.
 */
void REHOST_DIGEST_LOOP(const unsigned char *src, Py_ssize_t len, unsigned char *dst)
{
    for (Py_ssize_t at = 0; at < len; at += REHOST_BLOCK, dst += 8) {
        size_t size = (size_t)(len - at < REHOST_BLOCK ? len - at : REHOST_BLOCK);
        XXH64_canonical_t canonical;
        XXH64_canonicalFromHash(&canonical, XXH3_64bits(src + at, size));
        memcpy(dst, canonical.digest, 8);
    }
}
