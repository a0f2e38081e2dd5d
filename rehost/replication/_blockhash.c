/*
 * Per-block XXH3-64 digests of a buffer in one call, without the GIL.
 *
 * Why native: a hash-diff cycle digests every 4 KiB block of the allocated disk. Done from
 * Python, each block is a call that holds the GIL (python-xxhash never releases it), so the
 * cycle's two workers took turns instead of hashing side by side (docs/benchmarks.md, issue
 * 17). Here one call digests a whole chunk and lets the other worker run meanwhile.
 *
 * The digests are the canonical (big-endian) XXH3-64 of each block, the last one possibly
 * short: byte for byte what rehost.replication.digests.digest_blocks_py returns, which is
 * used where this module is not built. XXH3 comes from libxxhash's header (inlined: the
 * module needs no shared library at run time); the loops are in _blockhash_default.c and
 * _blockhash_avx2.c, the AVX2 one chosen at import where the CPU has it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_blockhash.h"

/* below this a call keeps the GIL: giving it up and taking it back costs more than the hash */
#define RELEASE_GIL_FROM (64 * 1024)

static rehost_digest_fn digest_impl = rehost_digest_blocks_default;
static const char *impl_name = "default";

static PyObject *digest_with(rehost_digest_fn impl, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t blocks = (view.len + REHOST_BLOCK - 1) / REHOST_BLOCK;
    PyObject *out = PyBytes_FromStringAndSize(NULL, blocks * 8);
    if (out != NULL) {
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
        if (view.len >= RELEASE_GIL_FROM) {
            Py_BEGIN_ALLOW_THREADS
            impl(view.buf, view.len, dst);
            Py_END_ALLOW_THREADS
        } else {
            impl(view.buf, view.len, dst);
        }
    }
    PyBuffer_Release(&view);
    return out;
}

static PyObject *digest_blocks(PyObject *Py_UNUSED(module), PyObject *arg)
{
    return digest_with(digest_impl, arg);
}

/* the default build whatever the CPU has: lets the tests hold the two builds side by side */
static PyObject *digest_blocks_portable(PyObject *Py_UNUSED(module), PyObject *arg)
{
    return digest_with(rehost_digest_blocks_default, arg);
}

static PyMethodDef methods[] = {
    {"digest_blocks", digest_blocks, METH_O,
     "digest_blocks(data) -> bytes: XXH3-64 (canonical) of every 4 KiB block of data."},
    {"digest_blocks_portable", digest_blocks_portable, METH_O,
     "digest_blocks_portable(data) -> bytes: the same, always from the default (non-AVX2) build."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_blockhash",
    .m_doc = "Per-block XXH3-64 digests without the GIL.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__blockhash(void)
{
    digest_impl = rehost_digest_pick(&impl_name);
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "VARIANT", impl_name) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
