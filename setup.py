"""rehost's native parts: per-block digests (rehost/replication/_blockhash.c) and the sealing of
many blobs per call (rehost/repository/_sealing.c), both without the GIL.

Optional: where they cannot be built (no C compiler, no libxxhash-dev, libzstd-dev or libssl-dev),
installing still works and rehost computes the same digests and ids in Python, slower
(rehost.replication.digests, rehost.repository.crypto).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rehost.replication._blockhash",
            sources=["rehost/replication/_blockhash.c", "rehost/replication/_blockhash_avx2.c"],
            depends=["rehost/replication/_blockhash.h", "rehost/replication/_blockhash_loop.h"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "rehost.repository._sealing",
            sources=["rehost/repository/_sealing.c", "rehost/repository/_blake3.c"],
            depends=["rehost/repository/_blake3.h"],
            libraries=["zstd", "crypto"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
    ]
)
