/*
 * Blob ids (keyed BLAKE3) and zstd compression of many blobs in one call, without the GIL.
 *
 * Why native: a scattered delta seals tens of thousands of one-block blobs. Through blake3-py
 * and python-zstandard each blob is two C calls that give the GIL up and take it back; beside
 * a thread running Python, taking it back waits for that thread's switch interval, so a
 * cycle's two workers spent their time waiting instead of sealing side by side
 * (docs/benchmarks.md, issue 17). Here a chunk's runs are hashed in one call and compressed in
 * another, and the GIL is given up once for each.
 *
 * The ids are keyed BLAKE3 (_blake3.c, written from the specification). blake3-py is the
 * faster on large pieces, so the caller passes ``max_len`` and gets None for larger ones.
 *
 * Sealing is libzstd's compression, with what python-zstandard's ZstdCompressor(level)
 * .compress() writes (a frame with its content size, no checksum), or with ``raw`` a frame of
 * raw blocks (RFC 8878 §3.1.1.2: stored, not compressed; any zstd decoder reads it, and it costs
 * a copy: an initial copy is stored this way and compressed later, issue 17), then for an encrypted
 * repository OpenSSL's AES-256-GCM under a random 96-bit nonce, laid out as Sealer.seal lays
 * it out for cryptography's AESGCM to open: nonce, ciphertext, tag.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_blake3.h"
#include "_seal_core.h"

/* -- the pieces of a call ---------------------------------------------------------------- */

/* Buffers of every item of ``seq`` (a list or tuple), taken while the GIL is held. */
static Py_buffer *get_buffers(PyObject *seq, Py_ssize_t *count)
{
    PyObject *fast = PySequence_Fast(seq, "pieces must be a sequence of buffers");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Py_buffer *views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (views == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), &views[i], PyBUF_SIMPLE) < 0) {
            while (i-- > 0)
                PyBuffer_Release(&views[i]);
            PyMem_Free(views);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    *count = n;
    return views;
}

static void release_buffers(Py_buffer *views, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

static PyObject *blob_ids(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer keybuf;
    PyObject *seq;
    Py_ssize_t max_len;
    if (!PyArg_ParseTuple(args, "y*On:blob_ids", &keybuf, &seq, &max_len))
        return NULL;
    if (keybuf.len != 32) {
        PyBuffer_Release(&keybuf);
        PyErr_SetString(PyExc_ValueError, "the hash key must be 32 bytes");
        return NULL;
    }
    uint32_t key[8];
    for (int i = 0; i < 8; i++)
        key[i] = load32((const uint8_t *)keybuf.buf + 4 * i);
    PyBuffer_Release(&keybuf);

    Py_ssize_t n = 0;
    Py_buffer *views = get_buffers(seq, &n);
    if (views == NULL)
        return NULL;
    char *hex = PyMem_Malloc(n ? (size_t)n * 64 : 1);
    char *todo = PyMem_Malloc(n ? (size_t)n : 1);
    if (hex == NULL || todo == NULL) {
        PyMem_Free(hex);
        PyMem_Free(todo);
        release_buffers(views, n);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++)
        todo[i] = views[i].len <= max_len;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rehost_blake3_keyed_many(key, views, todo, n, hex);
    Py_END_ALLOW_THREADS
    PyMem_Free(todo);
    if (rc < 0) {
        PyMem_Free(hex);
        release_buffers(views, n);
        return PyErr_NoMemory();
    }

    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *item;
        if (views[i].len <= max_len) {
            item = PyUnicode_FromStringAndSize(hex + 64 * i, 64);
            if (item == NULL)
                Py_CLEAR(out);
        } else {
            item = Py_NewRef(Py_None);
        }
        if (out != NULL)
            PyList_SET_ITEM(out, i, item);
    }
    PyMem_Free(hex);
    release_buffers(views, n);
    return out;
}

/* -- zstd ------------------------------------------------------------------------------- */

static PyObject *seal_pieces(PyObject *Py_UNUSED(module), PyObject *args)
{
    int level, raw = 0;
    PyObject *seq, *keyobj, *aadseq;
    if (!PyArg_ParseTuple(args, "iOOO|p:seal", &level, &seq, &keyobj, &aadseq, &raw))
        return NULL;
    Py_buffer key = {0};
    int encrypt = keyobj != Py_None;
    if (encrypt) {
        if (PyObject_GetBuffer(keyobj, &key, PyBUF_SIMPLE) < 0)
            return NULL;
        if (key.len != 32) {
            PyBuffer_Release(&key);
            PyErr_SetString(PyExc_ValueError, "the data key must be 32 bytes");
            return NULL;
        }
    }
    Py_ssize_t n = 0, naad = 0;
    Py_buffer *views = get_buffers(seq, &n);
    Py_buffer *aads = views == NULL ? NULL : get_buffers(aadseq, &naad);
    if (views == NULL || aads == NULL || naad != n) {
        if (aads != NULL) {
            release_buffers(aads, naad);
            PyErr_SetString(PyExc_ValueError, "one aad per piece");
        }
        if (views != NULL)
            release_buffers(views, n);
        if (encrypt)
            PyBuffer_Release(&key);
        return NULL;
    }
    PyObject *out = PyList_New(n);
    size_t *sizes = PyMem_Malloc(n ? (size_t)n * sizeof(size_t) : 1);
    ZSTD_CCtx *cctx = take_cctx();
    EVP_CIPHER_CTX *ectx = NULL;
    const char *failed = NULL;
    if (out == NULL || sizes == NULL || cctx == NULL)
        goto fail;
    if (encrypt && ((ectx = EVP_CIPHER_CTX_new()) == NULL ||
                    EVP_EncryptInit_ex(ectx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1)) {
        failed = "cannot set up AES-256-GCM";
        goto fail;
    }
    /* every output's room is made first: the loop below runs without the GIL */
    for (Py_ssize_t i = 0; i < n; i++) {
        /* OpenSSL takes int lengths, and the sealed frame may be larger than the piece */
        if (views[i].len > INT_MAX / 2 || aads[i].len > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "a piece or an aad is too large");
            goto fail;
        }
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)seal_room((size_t)views[i].len, encrypt, raw));
        if (b == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, b);
    }
    Py_BEGIN_ALLOW_THREADS
    seal_level(cctx, level);
    for (Py_ssize_t i = 0; i < n && failed == NULL; i++) {
        PyObject *b = PyList_GET_ITEM(out, i);
        sizes[i] = seal_into(cctx, ectx, key.buf, raw, views[i].buf, (size_t)views[i].len,
                             (unsigned char *)PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b), aads[i].buf,
                             (int)aads[i].len, &failed);
    }
    Py_END_ALLOW_THREADS
    if (failed != NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(out, i);
        PyList_SET_ITEM(out, i, NULL);
        if (_PyBytes_Resize(&b, (Py_ssize_t)sizes[i]) < 0)
            goto fail;
        PyList_SET_ITEM(out, i, b);
    }
    give_cctx(cctx);
    cctx = NULL;
    goto done;

fail:
    if (failed != NULL)
        PyErr_Format(PyExc_RuntimeError, "sealing failed: %s", failed);
    else if (!PyErr_Occurred())
        PyErr_NoMemory();
    Py_CLEAR(out);
done:
    if (cctx != NULL)
        ZSTD_freeCCtx(cctx);
    EVP_CIPHER_CTX_free(ectx);
    PyMem_Free(sizes);
    release_buffers(aads, naad);
    release_buffers(views, n);
    if (encrypt)
        PyBuffer_Release(&key);
    return out;
}

static PyMethodDef methods[] = {
    {"blob_ids", blob_ids, METH_VARARGS,
     "blob_ids(key, pieces, max_len) -> list: keyed BLAKE3 (hex) of each piece, None for a "
     "piece longer than max_len."},
    {"seal", seal_pieces, METH_VARARGS,
     "seal(level, pieces, key, aads, raw=False) -> list[bytes]: a zstd frame (with its content size) "
     "of each piece, of raw (stored) blocks with raw; with a key (32 bytes, else None) encrypted: "
     "nonce + AES-256-GCM (aad) + tag."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_sealing",
    .m_doc = "Blob ids and zstd compression of many blobs per call, without the GIL.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__sealing(void) { return PyModule_Create(&module); }
