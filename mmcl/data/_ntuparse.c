/*
 * A compiled reader for well-formed Kinect v2 ``.skeleton`` files (NTU RGB+D).
 *
 * ``parse(data: bytes)`` walks the counts of the file (frames, bodies, 25 joint lines per body)
 * and parses x y z colorX colorY of every joint. It accepts exactly the files that
 * mmcl.data.ntu's Python reader parses without complaint *and* whose numbers are decimals
 * such as Kinect writes them (``-0.2279616``, ``-7.257856E-05``); for anything else it returns None and the Python reader runs instead, which is also the one
 * that words the error for a malformed file. Lines end at '\n'; other ASCII whitespace (a CR
 * before the '\n', tabs, runs of spaces) separates fields, as ``bytes.split()`` does.
 *
 * A number is read as an integer mantissa M (< 10**15, exact in a double) and a decimal scale s
 * (the exponent minus the digits after the dot, |s| <= 22, so 10**|s| is exact too); M * 10**s
 * or M / 10**-s is then one correctly rounded IEEE operation, the double that ``float(token)``
 * gives, and it is cast to float32 as NumPy's ``astype(np.float32)`` does.
 *
 * Returns (declared_frames, dropped_frames, body_ids, instance_bodies, instance_frames, joints,
 * colors): dropped_frames a list of the 0-based frames with 0 bodies, body_ids the distinct
 * bodyIDs (bytes) in order of first appearance, and per body instance in file order:
 * instance_bodies a bytearray of int64 indices into body_ids, instance_frames one of int64 valid-frame indices per
 * instance, joints a bytearray of float32 (n, 25, 3) and colors one of float32 (n, 25, 2).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NUM_JOINTS 25
#define JOINT_FIELDS 12
#define BODY_FIELDS 10
#define MAX_TOKEN 32  /* characters of a number */
#define MAX_DIGITS 15 /* so that the mantissa < 10**15 < 2**53 is exact in a double */
#define MAX_SCALE 22  /* 10**22 is the largest power of ten that is exact in a double */
#define MAX_FIELDS 16

typedef struct {
    const char *p;   /* next unread byte */
    const char *end; /* end of the data */
} Cursor;

static const double POW10[MAX_SCALE + 1] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                            1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline int is_space(char c) {
    /* bytes.split()/strip() whitespace, without '\n' (the line separator here) */
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* The current line [start, stop) and the cursor moved past its '\n'. 0 at the end of data. */
static inline int next_line(Cursor *cur, const char **start, const char **stop) {
    if (cur->p >= cur->end) return 0;
    const char *nl = memchr(cur->p, '\n', (size_t)(cur->end - cur->p));
    *start = cur->p;
    *stop = nl ? nl : cur->end;
    cur->p = nl ? nl + 1 : cur->end;
    return 1;
}

/* Split [start, stop) on whitespace into at most MAX_FIELDS fields; the field count, or -1. */
static int split_fields(const char *start, const char *stop, const char **fs, const char **fe) {
    int n = 0;
    const char *p = start;
    while (p < stop) {
        while (p < stop && is_space(*p)) p++;
        if (p >= stop) break;
        if (n == MAX_FIELDS) return -1;
        fs[n] = p;
        while (p < stop && !is_space(*p)) p++;
        fe[n++] = p;
    }
    return n;
}

/* A line holding one non-negative decimal integer (surrounding whitespace allowed); -1 else. */
static long long parse_count(const char *start, const char *stop) {
    const char *fs[MAX_FIELDS], *fe[MAX_FIELDS];
    if (split_fields(start, stop, fs, fe) != 1) return -1;
    if (fe[0] - fs[0] > 9) return -1;
    long long v = 0;
    for (const char *p = fs[0]; p < fe[0]; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

/* ``-?digits[.digits][(e|E)[+-]digits]`` with at most MAX_DIGITS digits before the exponent
 * and a decimal scale within 10**+-22 (so the mantissa and the power of ten are exact doubles
 * and one IEEE multiply or divide rounds correctly); 0 if the token is anything else. */
static inline int parse_decimal(const char *p, const char *stop, double *out) {
    if (stop <= p || stop - p > MAX_TOKEN) return 0;
    int negative = (*p == '-');
    p += negative;
    uint64_t mantissa = 0;
    int digits = 0, fraction = -1;
    for (; p < stop && *p != 'e' && *p != 'E'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (d < 10) {
            mantissa = mantissa * 10 + d;
            digits++;
            if (fraction >= 0) fraction++;
        } else if (*p == '.' && fraction < 0) {
            fraction = 0;
        } else {
            return 0;
        }
    }
    if (digits == 0 || digits > MAX_DIGITS) return 0;
    int scale = fraction > 0 ? -fraction : 0;
    if (p < stop) { /* the exponent */
        p++;
        int exp_negative = (p < stop && *p == '-');
        if (p < stop && (*p == '-' || *p == '+')) p++;
        if (p >= stop || stop - p > 3) return 0;
        int exponent = 0;
        for (; p < stop; p++) {
            unsigned d = (unsigned)(*p - '0');
            if (d >= 10) return 0;
            exponent = exponent * 10 + (int)d;
        }
        scale += exp_negative ? -exponent : exponent;
    }
    if (scale < -MAX_SCALE || scale > MAX_SCALE) return 0;
    double v = scale < 0 ? (double)mantissa / POW10[-scale] : (double)mantissa * POW10[scale];
    *out = negative ? -v : v;
    return 1;
}

/* Growable arrays of the output. */
typedef struct {
    char *data;
    size_t used, size;
} Buffer;

static int buffer_add(Buffer *b, const void *src, size_t n) {
    if (b->used + n > b->size) {
        size_t size = b->size ? b->size * 2 : 1 << 16;
        while (size < b->used + n) size *= 2;
        char *grown = PyMem_Realloc(b->data, size);
        if (!grown) {
            PyErr_NoMemory();
            return 0;
        }
        b->data = grown;
        b->size = size;
    }
    memcpy(b->data + b->used, src, n);
    b->used += n;
    return 1;
}

/* The index of bodyID [p, p + n) in ``ids`` (bytes, first appearance order), or -1. */
static int64_t find_id(PyObject *ids, const char *p, Py_ssize_t n) {
    for (Py_ssize_t k = PyList_GET_SIZE(ids) - 1; k >= 0; k--) {
        PyObject *id = PyList_GET_ITEM(ids, k);
        if (PyBytes_GET_SIZE(id) == n && memcmp(PyBytes_AS_STRING(id), p, (size_t)n) == 0) return k;
    }
    return -1;
}

static PyObject *parse(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Cursor cur = {(const char *)view.buf, (const char *)view.buf + view.len};
    Buffer joints = {0}, colors = {0}, frames = {0}, bodies = {0};
    PyObject *dropped = PyList_New(0), *ids = PyList_New(0), *result = NULL;
    const char *ls, *le, *fs[MAX_FIELDS], *fe[MAX_FIELDS];
    long long declared = -1, valid = 0;
    int ok = dropped && ids;

    if (ok && next_line(&cur, &ls, &le)) declared = parse_count(ls, le);
    ok = ok && declared >= 0;
    for (long long f = 0; ok && f < declared; f++) {
        long long nbodies = -1;
        if (next_line(&cur, &ls, &le)) nbodies = parse_count(ls, le);
        if (nbodies < 0) { ok = 0; break; }
        if (nbodies == 0) {
            PyObject *index = PyLong_FromLongLong(f);
            ok = index && PyList_Append(dropped, index) == 0;
            Py_XDECREF(index);
            continue;
        }
        for (long long b = 0; ok && b < nbodies; b++) {
            if (!next_line(&cur, &ls, &le) || split_fields(ls, le, fs, fe) != BODY_FIELDS) { ok = 0; break; }
            int64_t body = find_id(ids, fs[0], fe[0] - fs[0]);
            if (body < 0) { /* a new bodyID */
                PyObject *id = PyBytes_FromStringAndSize(fs[0], fe[0] - fs[0]);
                body = PyList_GET_SIZE(ids);
                ok = id && PyList_Append(ids, id) == 0;
                Py_XDECREF(id);
            }
            ok = ok && buffer_add(&bodies, &body, sizeof body);
            if (!ok || !next_line(&cur, &ls, &le) || parse_count(ls, le) != NUM_JOINTS) { ok = 0; break; }
            float xyz[NUM_JOINTS * 3], uv[NUM_JOINTS * 2];
            for (int j = 0; ok && j < NUM_JOINTS; j++) {
                double v[5];
                ok = next_line(&cur, &ls, &le) && split_fields(ls, le, fs, fe) == JOINT_FIELDS &&
                     parse_decimal(fs[0], fe[0], &v[0]) && parse_decimal(fs[1], fe[1], &v[1]) &&
                     parse_decimal(fs[2], fe[2], &v[2]) && parse_decimal(fs[5], fe[5], &v[3]) &&
                     parse_decimal(fs[6], fe[6], &v[4]);
                if (!ok) break;
                for (int k = 0; k < 3; k++) xyz[j * 3 + k] = (float)v[k];
                uv[j * 2] = (float)v[3];
                uv[j * 2 + 1] = (float)v[4];
            }
            int64_t frame = valid;
            ok = ok && buffer_add(&joints, xyz, sizeof xyz) && buffer_add(&colors, uv, sizeof uv) &&
                 buffer_add(&frames, &frame, sizeof frame);
        }
        valid++;
    }
    /* nothing but whitespace may follow, and there must be a body */
    while (ok && next_line(&cur, &ls, &le)) ok = split_fields(ls, le, fs, fe) == 0;
    ok = ok && frames.used > 0;

    if (ok) {
        /* bytearrays, so that NumPy views of them are writable */
        PyObject *i = PyByteArray_FromStringAndSize(bodies.data, (Py_ssize_t)bodies.used);
        PyObject *f = PyByteArray_FromStringAndSize(frames.data, (Py_ssize_t)frames.used);
        PyObject *j = PyByteArray_FromStringAndSize(joints.data, (Py_ssize_t)joints.used);
        PyObject *c = PyByteArray_FromStringAndSize(colors.data, (Py_ssize_t)colors.used);
        if (i && f && j && c) result = Py_BuildValue("(LOOOOOO)", declared, dropped, ids, i, f, j, c);
        Py_XDECREF(i);
        Py_XDECREF(f);
        Py_XDECREF(j);
        Py_XDECREF(c);
    } else if (!PyErr_Occurred()) {
        result = Py_NewRef(Py_None);
    }
    PyMem_Free(joints.data);
    PyMem_Free(colors.data);
    PyMem_Free(frames.data);
    PyMem_Free(bodies.data);
    Py_XDECREF(dropped);
    Py_XDECREF(ids);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_O,
     "parse(data: bytes) -> (declared, dropped, body_ids, bodies, frames, joints, colors) | None\n\n"
     "Read a well-formed Kinect v2 .skeleton file; None for anything the Python reader must see."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ntuparse",
                                    "Compiled reader for well-formed NTU RGB+D .skeleton files.", -1, methods};

PyMODINIT_FUNC PyInit__ntuparse(void) { return PyModule_Create(&module); }
