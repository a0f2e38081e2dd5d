"""rehost's native parts, all without the GIL: per-block digests (rehost/replication/_blockhash.c),
the sealing of many blobs per call (rehost/repository/_sealing.c), and a chunk diffed and its
changed runs sealed in one call (rehost/replication/_chunkdiff.c, from the same parts).

Optional: where they cannot be built (no C compiler, no libxxhash-dev, libzstd-dev or libssl-dev),
installing still works and rehost computes the same digests and ids in Python, slower
(rehost.replication.digests, rehost.repository.crypto).
"""

from setuptools import Extension, setup

#: the block digest loops (default and AVX2 builds), linked into every module that digests
DIGESTS = ["rehost/replication/_blockhash_default.c", "rehost/replication/_blockhash_avx2.c"]
DIGEST_HEADERS = ["rehost/replication/_blockhash.h", "rehost/replication/_blockhash_loop.h"]
SEALING_HEADERS = ["rehost/repository/_blake3.h", "rehost/repository/_seal_core.h"]

setup(
    ext_modules=[
        Extension(
            "rehost.replication._blockhash",
            sources=[*DIGESTS, "rehost/replication/_blockhash.c"],
            depends=DIGEST_HEADERS,
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "rehost.repository._sealing",
            sources=["rehost/repository/_sealing.c", "rehost/repository/_blake3.c"],
            depends=SEALING_HEADERS,
            libraries=["zstd", "crypto"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "rehost.replication._chunkdiff",
            sources=["rehost/replication/_chunkdiff.c", *DIGESTS, "rehost/repository/_blake3.c"],
            depends=DIGEST_HEADERS + SEALING_HEADERS,
            libraries=["zstd", "crypto"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
    ]
)
