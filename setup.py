"""The one native part of rehost: per-block digests without the GIL (rehost/replication/_blockhash.c).

Optional: where it cannot be built (no C compiler, no libxxhash-dev), installing still works
and rehost computes the same digests in Python, slower (rehost.replication.digests).
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
        )
    ]
)
