/*
 * A chunk diffed and its changed runs sealed in one call, without the GIL.
 *
 * Why native: on a scattered delta nearly every 1 MiB chunk has a few changed blocks. Diffing
 * one from Python took a digest call, the runs cut in Python, a copy and a digest per run,
 * a call for the blob ids and one for the sealing: three or four times per chunk a worker gave
 * the GIL up and waited to take it back, and beside a thread running Python each wait is up to
 * a switch interval (docs/benchmarks.md, issue 17: 0.27 s of a 0.45 s cycle). Here a batch of
 * chunks is one wait.
 *
 * What it does is rehost.replication.chunk_diff's Python path, byte for byte (tests/replication/
 * test_chunk_diff.py holds them side by side): XXH3 digests of every 4 KiB block (the loops of
 * _blockhash_default.c and _blockhash_avx2.c), changed blocks cut into runs that are all zeros
 * or all data, each data run copied first when the chunk is a view of pages that may change
 * (and digested again from the copy), its id (keyed BLAKE3, _blake3.c) and its sealed bytes
 * (_seal_core.h). One difference: every run is sealed, also one whose blob is stored already,
 * because whether it is known is the writer's index, a Python object; the writer drops such a
 * blob (Writer.add_sealed_many), so a delta repeating stored data costs its compression.
 * Runs longer than ``id_max`` are left to the caller (blake3-py hashes them faster). A call takes
 * a worker's batch of chunks (eight), so the GIL is given up once per batch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "_blockhash.h"
#include "../repository/_blake3.h"
#include "../repository/_seal_core.h"

static rehost_digest_fn digest_impl = rehost_digest_blocks_default;
static unsigned char zero_digest[8];

struct run {
    Py_ssize_t start, end; /* bytes, relative to the chunk */
    int zero;
    Py_ssize_t piece; /* index among the sealed pieces, or -1 (a zero run, or too long) */
};

/* Runs of changed blocks, each all zeros or all data; returns how many. */
static Py_ssize_t cut_runs(const unsigned char *new, const unsigned char *old, Py_ssize_t nblocks, Py_ssize_t len,
                           struct run *runs)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < nblocks; i++) {
        if (memcmp(new + 8 * i, old + 8 * i, 8) == 0)
            continue;
        int zero = memcmp(new + 8 * i, zero_digest, 8) == 0;
        Py_ssize_t end = (i + 1) * REHOST_BLOCK < len ? (i + 1) * REHOST_BLOCK : len;
        if (n > 0 && runs[n - 1].end == i * REHOST_BLOCK && runs[n - 1].zero == zero) {
            runs[n - 1].end = end;
        } else {
            runs[n] = (struct run){i * REHOST_BLOCK, end, zero, -1};
            n++;
        }
    }
    return n;
}

struct work {
    /* in */
    const unsigned char *data;
    Py_ssize_t len, nblocks, id_max;
    const unsigned char *old;
    unsigned char *digests; /* out, nblocks * 8 */
    uint32_t key[8];
    int level, raw, copy;
    const unsigned char *data_key; /* NULL: not encrypted */
    /* out */
    struct run *runs;
    Py_ssize_t nruns, npieces;
    Py_buffer *pieces; /* buf and len only */
    unsigned char *copies;
    char *hex;
    unsigned char *sealed;
    size_t *offsets, *sizes;
    const char *failed;
};

static void free_work(struct work *w)
{
    free(w->runs);
    free(w->pieces);
    free(w->copies);
    free(w->hex);
    free(w->sealed);
    free(w->offsets);
    free(w->sizes);
}

/* Everything between the digests and the sealed bytes; runs without the GIL. Returns 0, or -1
 * with w->failed set (or NULL: out of memory). */
static int diff_and_seal_nogil(struct work *w, ZSTD_CCtx *cctx)
{
    digest_impl(w->data, w->len, w->digests);
    if (memcmp(w->digests, w->old, (size_t)w->nblocks * 8) == 0)
        return 0;
    w->runs = malloc((size_t)w->nblocks * sizeof *w->runs);
    if (w->runs == NULL)
        return -1;
    w->nruns = cut_runs(w->digests, w->old, w->nblocks, w->len, w->runs);

    size_t copied = 0, room = 0;
    int encrypt = w->data_key != NULL;
    for (Py_ssize_t r = 0; r < w->nruns; r++) {
        Py_ssize_t n = w->runs[r].end - w->runs[r].start;
        if (w->runs[r].zero || n > w->id_max)
            continue;
        w->runs[r].piece = w->npieces++;
        copied += (size_t)n;
        room += seal_room((size_t)n, encrypt, w->raw);
    }
    if (w->npieces == 0)
        return 0;
    w->pieces = calloc((size_t)w->npieces, sizeof *w->pieces);
    w->hex = malloc((size_t)w->npieces * 64);
    w->sealed = malloc(room);
    w->offsets = malloc((size_t)w->npieces * sizeof *w->offsets);
    w->sizes = malloc((size_t)w->npieces * sizeof *w->sizes);
    w->copies = w->copy ? malloc(copied) : NULL;
    char *todo = malloc((size_t)w->npieces);
    if (w->pieces == NULL || w->hex == NULL || w->sealed == NULL || w->offsets == NULL || w->sizes == NULL ||
        todo == NULL || (w->copy && w->copies == NULL)) {
        free(todo);
        return -1;
    }
    size_t at = 0;
    for (Py_ssize_t r = 0; r < w->nruns; r++) {
        struct run *run = &w->runs[r];
        if (run->piece < 0)
            continue;
        Py_ssize_t n = run->end - run->start;
        const unsigned char *src = w->data + run->start;
        if (w->copy) { /* the pages may change under us: what is sealed is digested again */
            memcpy(w->copies + at, src, (size_t)n);
            src = w->copies + at;
            digest_impl(src, n, w->digests + run->start / REHOST_BLOCK * 8);
            at += (size_t)n;
        }
        w->pieces[run->piece].buf = (void *)src;
        w->pieces[run->piece].len = n;
        todo[run->piece] = 1;
    }
    int rc = rehost_blake3_keyed_many(w->key, w->pieces, todo, w->npieces, w->hex);
    free(todo);
    if (rc < 0)
        return -1;

    EVP_CIPHER_CTX *ectx = NULL;
    if (encrypt && ((ectx = EVP_CIPHER_CTX_new()) == NULL ||
                    EVP_EncryptInit_ex(ectx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1)) {
        EVP_CIPHER_CTX_free(ectx);
        w->failed = "cannot set up AES-256-GCM";
        return -1;
    }
    seal_level(cctx, w->level);
    size_t off = 0;
    for (Py_ssize_t i = 0; i < w->npieces && w->failed == NULL; i++) {
        size_t n = (size_t)w->pieces[i].len, space = seal_room(n, encrypt, w->raw);
        w->offsets[i] = off;
        w->sizes[i] = seal_into(cctx, ectx, w->data_key, w->raw, w->pieces[i].buf, n, w->sealed + off, space,
                                (const unsigned char *)w->hex + 64 * i, 64, &w->failed);
        off += space;
    }
    EVP_CIPHER_CTX_free(ectx);
    return w->failed == NULL ? 0 : -1;
}

/* (start, end, zero) of each run, and per data run (id, sealed, length) or None. */
static PyObject *results(const struct work *w, PyObject *digests)
{
    PyObject *runs = PyList_New(w->nruns), *blobs = PyList_New(0);
    if (runs == NULL || blobs == NULL)
        goto fail;
    for (Py_ssize_t r = 0; r < w->nruns; r++) {
        const struct run *run = &w->runs[r];
        PyObject *item = Py_BuildValue("(nnO)", run->start, run->end, run->zero ? Py_True : Py_False);
        if (item == NULL)
            goto fail;
        PyList_SET_ITEM(runs, r, item);
        if (run->zero)
            continue;
        Py_ssize_t i = run->piece;
        PyObject *blob = i < 0 ? Py_NewRef(Py_None)
                               : Py_BuildValue("(s#y#n)", w->hex + 64 * i, (Py_ssize_t)64, w->sealed + w->offsets[i],
                                               (Py_ssize_t)w->sizes[i], w->pieces[i].len);
        if (blob == NULL || PyList_Append(blobs, blob) < 0) {
            Py_XDECREF(blob);
            goto fail;
        }
        Py_DECREF(blob);
    }
    PyObject *out = PyTuple_Pack(3, digests, runs, blobs);
    Py_DECREF(runs);
    Py_DECREF(blobs);
    return out;
fail:
    Py_XDECREF(runs);
    Py_XDECREF(blobs);
    return NULL;
}

static PyObject *diff_and_seal_many(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"chunks", "olds", "hash_key", "id_max", "level", "data_key", "raw", NULL};
    PyObject *chunkseq, *oldseq, *keyobj;
    Py_buffer hash_key, data_key = {0};
    Py_ssize_t id_max;
    int level, raw;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOy*niOp:diff_and_seal_many", kwlist, &chunkseq, &oldseq,
                                     &hash_key, &id_max, &level, &keyobj, &raw))
        return NULL;
    PyObject *chunks = PySequence_Fast(chunkseq, "chunks must be a sequence of buffers");
    PyObject *olds = chunks == NULL ? NULL : PySequence_Fast(oldseq, "olds must be a sequence of buffers");
    Py_ssize_t n = chunks == NULL ? 0 : PySequence_Fast_GET_SIZE(chunks), got = 0;
    Py_buffer *views = PyMem_Calloc(2 * (size_t)n + 1, sizeof(Py_buffer)); /* data, old, data, old, ... */
    struct work *ws = PyMem_Calloc((size_t)n + 1, sizeof(struct work));
    PyObject *digests = n >= 0 ? PyList_New(n) : NULL, *out = NULL;
    ZSTD_CCtx *cctx = NULL;
    if (chunks == NULL || olds == NULL || views == NULL || ws == NULL || digests == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    if (PySequence_Fast_GET_SIZE(olds) != n) {
        PyErr_SetString(PyExc_ValueError, "one old digests per chunk");
        goto done;
    }
    if (hash_key.len != 32) {
        PyErr_SetString(PyExc_ValueError, "the hash key must be 32 bytes");
        goto done;
    }
    if (keyobj != Py_None) {
        if (PyObject_GetBuffer(keyobj, &data_key, PyBUF_SIMPLE) < 0)
            goto done;
        if (data_key.len != 32) {
            PyErr_SetString(PyExc_ValueError, "the data key must be 32 bytes");
            goto done;
        }
    }
    for (; got < n; got++) {
        Py_buffer *data = &views[2 * got], *old = &views[2 * got + 1];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(chunks, got), data, PyBUF_SIMPLE) < 0)
            goto done;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(olds, got), old, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(data);
            goto done;
        }
        struct work *w = &ws[got];
        *w = (struct work){.data = data->buf, .len = data->len, .old = old->buf, .id_max = id_max, .level = level,
                           .raw = raw, .copy = data->readonly, .data_key = data_key.obj ? data_key.buf : NULL};
        w->nblocks = (data->len + REHOST_BLOCK - 1) / REHOST_BLOCK;
        for (int k = 0; k < 8; k++)
            w->key[k] = load32((const uint8_t *)hash_key.buf + 4 * k);
        if (old->len != w->nblocks * 8) {
            PyErr_Format(PyExc_ValueError, "old digests: %zd bytes for %zd blocks", old->len, w->nblocks);
            got++;
            goto done;
        }
        if (data->len > INT_MAX / 2) {
            PyErr_SetString(PyExc_ValueError, "a chunk is too large");
            got++;
            goto done;
        }
        PyObject *d = PyBytes_FromStringAndSize(NULL, w->nblocks * 8);
        if (d == NULL) {
            got++;
            goto done;
        }
        PyList_SET_ITEM(digests, got, d);
        w->digests = (unsigned char *)PyBytes_AS_STRING(d);
    }
    cctx = take_cctx();
    if (cctx == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const char *failed = NULL;
    int oom = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && failed == NULL && !oom; i++) {
        if (diff_and_seal_nogil(&ws[i], cctx) < 0) {
            failed = ws[i].failed;
            oom = failed == NULL;
        }
    }
    Py_END_ALLOW_THREADS
    if (failed != NULL || oom) {
        if (failed != NULL)
            PyErr_Format(PyExc_RuntimeError, "sealing failed: %s", failed);
        else
            PyErr_NoMemory();
        goto done;
    }
    out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *r = results(&ws[i], PyList_GET_ITEM(digests, i));
        if (r == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, r);
    }
done:
    give_cctx(cctx);
    for (Py_ssize_t i = 0; ws != NULL && i < n; i++)
        free_work(&ws[i]);
    for (Py_ssize_t i = 0; i < 2 * got; i++)
        if (views[i].obj != NULL)
            PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(ws);
    Py_XDECREF(digests);
    Py_XDECREF(chunks);
    Py_XDECREF(olds);
    if (data_key.obj != NULL)
        PyBuffer_Release(&data_key);
    PyBuffer_Release(&hash_key);
    return out;
}

static PyMethodDef methods[] = {
    {"diff_and_seal_many", (PyCFunction)(void (*)(void))diff_and_seal_many, METH_VARARGS | METH_KEYWORDS,
     "diff_and_seal_many(chunks, olds, hash_key, id_max, level, data_key, raw) -> [(digests, runs, blobs)]: per "
     "chunk its block digests, its changed runs as (start, end, zero), and per data run (id, sealed, length), "
     "or None for a run longer than id_max (sealed by the caller). The data runs of a read-only chunk (a view "
     "of pages that may change) are copied before they are digested again and sealed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_chunkdiff",
    .m_doc = "A chunk's digests, changed runs and sealed blobs in one call, without the GIL.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__chunkdiff(void)
{
    const char *name;
    digest_impl = rehost_digest_pick(&name);
    static const unsigned char zeros[REHOST_BLOCK];
    digest_impl(zeros, REHOST_BLOCK, zero_digest);
    return PyModule_Create(&module);
}
