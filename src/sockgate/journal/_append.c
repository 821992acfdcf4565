/* The journal's write path in C: Entry objects -> checked values -> canonical row ->
 * sha256 chain -> SQLite insert, a whole batch per call.
 *
 * Why C: in Python this costs ~20 us per entry (checks, two JSON encodes, hash, the
 * sqlite3 module's binding), which caps the daemon below the kernel's event rate. Here the
 * Python objects are read once with the GIL held; hashing and inserting run with the GIL
 * released, so the daemon's reader and the importer's parser keep going meanwhile.
 *
 * The bytes hashed are exactly store.canonical(row): a compact JSON array of the FIELDS
 * values as stored (json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)), and
 * `extra` is store.dump_extra(extra) (sorted keys). verify.py recomputes both in Python;
 * tests/journal/test_append_c.py checks the two agree byte for byte.
 *
 * The Appender has its own SQLite connection to the receiver (the same libsqlite3 as
 * Python's sqlite3 module, so POSIX locks are shared properly within the process); the
 * Python connection keeps reads, meta and seals. Transactions: begin()/commit()/rollback()
 * around one or more append() calls.
 *
 * The Reader (below) is the read path for long scans (Journal.decisions), for the same
 * reason: the sqlite3 module's per-value conversion was ~80% of `policy replay`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <string.h>

/* store.FIELDS, in order (checked against it at import time). */
static const char *const FIELD_NAMES[] = {
    "seq", "ts_ns", "code", "type", "source", "host", "outcome", "rule", "uid", "user",
    "gid", "pid", "program", "family", "local_addr", "local_port", "remote_addr",
    "remote_port", "extra", "ident",
};
enum {
    F_SEQ, F_TS, F_CODE, F_TYPE, F_SOURCE, F_HOST, F_OUTCOME, F_RULE, F_UID, F_USER,
    F_GID, F_PID, F_PROGRAM, F_FAMILY, F_LADDR, F_LPORT, F_RADDR, F_RPORT, F_EXTRA, F_IDENT,
    NFIELDS
};
#define NCOLUMNS (NFIELDS + 3) /* + local_key, remote_key, hash */

static PyObject *field_names[NFIELDS]; /* interned attribute names */
static PyObject *WriteError;           /* SQLite failed (the caller rolls back); .code = its code */
static PyObject *BusyError;            /* WriteError for SQLITE_BUSY/SQLITE_LOCKED: another
                                          connection holds the receiver (told by code, not text) */
static PyObject *ReadError;            /* SQLite failed while the Reader read (.code = its code) */

/* One value of one entry: NULL, an integer, or text (UTF-8 owned by a live object or
 * by the batch's arena, see `off`). */
enum { V_NULL, V_INT, V_TEXT, V_ARENA };
typedef struct {
    int kind;
    long long i;
    const char *s;
    Py_ssize_t n; /* text length; for V_ARENA s is NULL and i is the arena offset */
} value_t;

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(buf_t *b, const char *s, size_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* A JSON string the way Python's json module writes it with ensure_ascii=False:
 * '"' '\\' and the C0 controls escaped (\b \f \n \r \t short, others \u00xx). */
static int put_json_string(buf_t *b, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_reserve(b, (size_t)n * 6 + 2) < 0)
        return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            *o++ = 'u'; *o++ = '0'; *o++ = '0';
            *o++ = hex[c >> 4]; *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return 0;
}

static int put_int(buf_t *b, long long v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    return buf_put(b, tmp, (size_t)n);
}

/* 16 bytes that sort like the address (store.addr_key): IPv6 as is (scope dropped), IPv4
 * as ::ffff:a.b.c.d. Returns 0 if the text is not an address (the key is then NULL). */
static const unsigned char MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int addr_key(const char *s, Py_ssize_t n, unsigned char key[16], int *is_v4) {
    char tmp[64];
    if (n <= 0 || memchr(s, 0, (size_t)n))
        return 0;
    int v6 = memchr(s, ':', (size_t)n) != NULL;
    if (v6) { /* the scope goes before the length check: verify's record.addr_key drops it first */
        const char *pct = memchr(s, '%', (size_t)n);
        if (pct)
            n = pct - s;
    }
    if (n >= (Py_ssize_t)sizeof tmp) /* longer than any address text */
        return 0;
    memcpy(tmp, s, (size_t)n);
    tmp[n] = 0;
    if (v6) {
        *is_v4 = 0;
        return inet_pton(AF_INET6, tmp, key) == 1;
    }
    memcpy(key, MAPPED, 12);
    *is_v4 = 1;
    return inet_pton(AF_INET, tmp, key + 12) == 1;
}

/* ---------------------------------------------------------------- the Appender object */

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *insert;
    EVP_MD_CTX *md_ctx;
    const EVP_MD *md;
    PyObject *allowed[4]; /* frozensets of str: codes, types, sources, outcomes */
    PyObject *internal;   /* types only the journal itself writes */
    PyObject *dump_extra; /* Python fallback for extras that are not flat scalars */
    int busy;
    char *path;
} Appender;

static void Appender_dealloc(Appender *self) {
    if (self->insert)
        sqlite3_finalize(self->insert);
    if (self->db)
        sqlite3_close_v2(self->db);
    if (self->md_ctx)
        EVP_MD_CTX_free(self->md_ctx);
    for (int k = 0; k < 4; k++)
        Py_XDECREF(self->allowed[k]);
    Py_XDECREF(self->internal);
    Py_XDECREF(self->dump_extra);
    free(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* SQLite's last error on db as `type` (or BusyError for SQLITE_BUSY/SQLITE_LOCKED when
 * type is WriteError), with .code = the extended result code. Returns NULL. */
static PyObject *raise_sqlite(sqlite3 *db, PyObject *type, const char *what) {
    int code = db ? sqlite3_extended_errcode(db) : SQLITE_MISUSE;
    int primary = code & 0xff;
    if (type == WriteError && (primary == SQLITE_BUSY || primary == SQLITE_LOCKED))
        type = BusyError;
    PyObject *msg = PyUnicode_FromFormat("%s: %s", what, db ? sqlite3_errmsg(db) : "no connection");
    PyObject *exc = msg ? PyObject_CallOneArg(type, msg) : NULL;
    PyObject *num = exc ? PyLong_FromLong(code) : NULL;
    if (num && PyObject_SetAttrString(exc, "code", num) == 0)
        PyErr_SetObject(type, exc);
    Py_XDECREF(num);
    Py_XDECREF(exc);
    Py_XDECREF(msg);
    return NULL;
}

static PyObject *sqlite_error(Appender *self, const char *what) {
    return raise_sqlite(self->db, WriteError, what);
}

static int exec_nogil(Appender *self, const char *sql) {
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sqlite3_exec(self->db, sql, NULL, NULL, NULL);
    Py_END_ALLOW_THREADS
    return rc;
}

static int Appender_init(Appender *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "sync", "codes", "types", "sources", "outcomes",
                             "internal", "dump_extra", "busy_ms", NULL};
    const char *path, *sync;
    PyObject *sets[4], *internal, *dump_extra;
    int busy_ms = 10000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ssOOOOOO|$i", kwlist, &path, &sync, &sets[0],
                                     &sets[1], &sets[2], &sets[3], &internal, &dump_extra, &busy_ms))
        return -1;
    if (busy_ms < 0) {
        PyErr_SetString(PyExc_ValueError, "busy_ms must be >= 0");
        return -1;
    }
    if (self->db) {
        PyErr_SetString(PyExc_RuntimeError, "Appender already initialised");
        return -1;
    }
    if (strcmp(sync, "OFF") && strcmp(sync, "NORMAL") && strcmp(sync, "FULL") && strcmp(sync, "EXTRA")) {
        PyErr_Format(PyExc_ValueError, "sync must be OFF, NORMAL, FULL or EXTRA, not %s", sync);
        return -1;
    }
    for (int k = 0; k < 4; k++)
        if (!(self->allowed[k] = PyFrozenSet_New(sets[k])))
            return -1;
    if (!(self->internal = PyFrozenSet_New(internal)))
        return -1;
    Py_INCREF(dump_extra);
    self->dump_extra = dump_extra;
    self->path = strdup(path);
    if (sqlite3_open_v2(path, &self->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        sqlite_error(self, path);
        return -1;
    }
    char pragmas[200];
    snprintf(pragmas, sizeof pragmas,
             "PRAGMA busy_timeout=%d; PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; "
             "PRAGMA cache_size=-32768;", busy_ms, sync);
    if (sqlite3_exec(self->db, pragmas, NULL, NULL, NULL) != SQLITE_OK) {
        sqlite_error(self, path);
        return -1;
    }
    char sql[1024] = "INSERT INTO entry (";
    for (int k = 0; k < NFIELDS; k++) {
        strcat(sql, FIELD_NAMES[k]);
        strcat(sql, ",");
    }
    strcat(sql, "local_key,remote_key,hash) VALUES (?");
    for (int k = 1; k < NCOLUMNS; k++)
        strcat(sql, ",?");
    strcat(sql, ")");
    if (sqlite3_prepare_v3(self->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &self->insert, NULL) != SQLITE_OK) {
        sqlite_error(self, path);
        return -1;
    }
    self->md = EVP_sha256();
    self->md_ctx = EVP_MD_CTX_new();
    if (!self->md_ctx) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- reading one Entry */

typedef struct {
    value_t v[NFIELDS];
    int skip;          /* ident already journaled in an older receiver */
} row_t;

/* text of a str (or str-valued enum member); 0 if obj is not a str */
static int text_of(PyObject *obj, value_t *out) {
    if (!PyUnicode_Check(obj))
        return 0;
    out->s = PyUnicode_AsUTF8AndSize(obj, &out->n);
    if (!out->s)
        return -1;
    out->kind = V_TEXT;
    return 1;
}

/* extra as store.dump_extra would write it, into the arena. Flat dicts of str keys and
 * str/int/bool/None values are encoded here; anything else goes to dump_extra itself. */
static int encode_extra(Appender *self, PyObject *extra, buf_t *arena, value_t *out) {
    out->kind = V_ARENA;
    out->s = NULL;
    out->i = (long long)arena->len;
    Py_ssize_t n = PyDict_GET_SIZE(extra);
    if (n == 0) {
        if (buf_put(arena, "{}", 2) < 0)
            return -1;
        out->n = 2;
        return 0;
    }
    /* keys sorted by code point = by UTF-8 bytes; extras are small: insertion sort */
    enum { MAXKEYS = 32 };
    struct { const char *s; Py_ssize_t n; PyObject *v; } items[MAXKEYS];
    int simple = n <= MAXKEYS;
    Py_ssize_t pos = 0, cnt = 0;
    PyObject *key, *val;
    while (simple && PyDict_Next(extra, &pos, &key, &val)) {
        if (!PyUnicode_CheckExact(key) ||
            !(val == Py_None || PyBool_Check(val) || PyLong_CheckExact(val) || PyUnicode_CheckExact(val))) {
            simple = 0;
            break;
        }
        const char *ks = PyUnicode_AsUTF8AndSize(key, &items[cnt].n);
        if (!ks)
            return -1;
        items[cnt].s = ks;
        items[cnt].v = val;
        Py_ssize_t j = cnt++;
        while (j > 0) {
            Py_ssize_t a = items[j - 1].n, b = items[j].n;
            int c = memcmp(items[j - 1].s, items[j].s, (size_t)(a < b ? a : b));
            if (c < 0 || (c == 0 && a < b))
                break;
            __typeof__(items[0]) t = items[j];
            items[j] = items[j - 1];
            items[j - 1] = t;
            j--;
        }
    }
    if (simple) {
        size_t start = arena->len;
        int err = buf_put(arena, "{", 1);
        for (Py_ssize_t k = 0; k < cnt && !err; k++) {
            PyObject *v = items[k].v;
            err = (k && buf_put(arena, ",", 1)) || put_json_string(arena, items[k].s, items[k].n) ||
                  buf_put(arena, ":", 1);
            if (err)
                break;
            if (v == Py_None)
                err = buf_put(arena, "null", 4);
            else if (v == Py_True)
                err = buf_put(arena, "true", 4);
            else if (v == Py_False)
                err = buf_put(arena, "false", 5);
            else if (PyLong_CheckExact(v)) {
                int overflow;
                long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
                if (overflow) { /* a big int: let Python write it */
                    arena->len = start;
                    simple = 0;
                    break;
                }
                err = put_int(arena, x);
            } else {
                Py_ssize_t sn;
                const char *ss = PyUnicode_AsUTF8AndSize(v, &sn);
                if (!ss)
                    return -1;
                err = put_json_string(arena, ss, sn);
            }
        }
        if (simple) {
            if (err || buf_put(arena, "}", 1) < 0) {
                PyErr_NoMemory();
                return -1;
            }
            out->n = (Py_ssize_t)(arena->len - start);
            return 0;
        }
    }
    PyObject *text = PyObject_CallOneArg(self->dump_extra, extra);
    if (!text)
        return -1;
    Py_ssize_t tn;
    const char *ts = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &tn) : NULL;
    if (!ts) {
        Py_DECREF(text);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "dump_extra must return str");
        return -1;
    }
    int err = buf_put(arena, ts, (size_t)tn);
    Py_DECREF(text);
    if (err < 0) {
        PyErr_NoMemory();
        return -1;
    }
    out->n = tn;
    return 0;
}

#define BAD(...) do { PyErr_Format(PyExc_ValueError, __VA_ARGS__); return -1; } while (0)

/* Entry -> checked values. objs[] receives the attribute references (kept alive while
 * the GIL is released: the text pointers point into them). */
static int read_entry(Appender *self, PyObject *e, Py_ssize_t i, int internal_ok,
                      const value_t *host, buf_t *arena, row_t *row, PyObject **objs) {
    value_t *v = row->v;
    for (int k = 1; k < NFIELDS; k++) {
        PyObject *o = PyObject_GetAttr(e, field_names[k]);
        if (!o) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
                BAD("entry %zd: not a journal Entry (no %s)", i, FIELD_NAMES[k]);
            }
            return -1;
        }
        objs[k] = o;
        value_t *x = &v[k];
        x->kind = V_NULL;
        switch (k) {
        case F_TS:
        case F_UID: case F_GID: case F_PID:
        case F_LPORT: case F_RPORT: {
            if (o == Py_None && k != F_TS)
                break;
            int overflow = 0;
            if (!PyLong_CheckExact(o) || ((x->i = PyLong_AsLongLongAndOverflow(o, &overflow)), overflow))
                BAD("entry %zd: bad %s %R", i, FIELD_NAMES[k], o);
            if ((k == F_TS && x->i < 0) || ((k == F_LPORT || k == F_RPORT) && (x->i < 0 || x->i > 65535)))
                BAD("entry %zd: bad %s %R", i, FIELD_NAMES[k], o);
            x->kind = V_INT;
            break;
        }
        case F_CODE: case F_TYPE: case F_SOURCE: case F_OUTCOME: {
            if (o == Py_None && k == F_OUTCOME)
                break;
            PyObject *set = self->allowed[k == F_CODE ? 0 : k == F_TYPE ? 1 : k == F_SOURCE ? 2 : 3];
            int r = PyUnicode_Check(o) ? PySet_Contains(set, o) : 0;
            if (r < 0)
                return -1;
            if (!r)
                BAD("entry %zd: not a valid code/type/source/outcome: %R", i, o);
            if (text_of(o, x) < 0)
                return -1;
            if (k == F_TYPE && !internal_ok) {
                if ((r = PySet_Contains(self->internal, o)) < 0)
                    return -1;
                if (r)
                    BAD("entry %zd: '%s' records are written by the journal itself", i, x->s);
            }
            break;
        }
        case F_EXTRA:
            if (!PyDict_Check(o))
                BAD("entry %zd: extra must be a dict", i);
            if (encode_extra(self, o, arena, x) < 0)
                return -1;
            break;
        default: /* host, rule, user, program, family, addresses, ident: text or None */
            if (o == Py_None)
                break;
            if (!PyUnicode_Check(o))
                BAD("entry %zd: %s must be text, not %s", i, FIELD_NAMES[k], Py_TYPE(o)->tp_name);
            if (text_of(o, x) < 0)
                return -1;
        }
    }
    if (v[F_HOST].kind == V_NULL || v[F_HOST].n == 0)
        v[F_HOST] = *host;
    return 0;
}

/* ---------------------------------------------------------------- writing */

static const char *text_ptr(const value_t *x, const buf_t *arena) {
    return x->kind == V_ARENA ? arena->p + x->i : x->s;
}

static int canonical(buf_t *out, const value_t *v, const buf_t *arena) {
    int err = buf_put(out, "[", 1);
    for (int k = 0; k < NFIELDS && !err; k++) {
        if (k)
            err = buf_put(out, ",", 1);
        if (err)
            break;
        const value_t *x = &v[k];
        switch (x->kind) {
        case V_NULL: err = buf_put(out, "null", 4); break;
        case V_INT: err = put_int(out, x->i); break;
        default: err = put_json_string(out, text_ptr(x, arena), x->n);
        }
    }
    return err || buf_put(out, "]", 1);
}

static int bind_value(sqlite3_stmt *st, int col, const value_t *x, const buf_t *arena) {
    switch (x->kind) {
    case V_NULL: return sqlite3_bind_null(st, col);
    case V_INT: return sqlite3_bind_int64(st, col, x->i);
    default: return sqlite3_bind_text(st, col, text_ptr(x, arena), (int)x->n, SQLITE_STATIC);
    }
}

/* The GIL-free part: for each row, skip it if its ident is journaled, else seq + 1, chain
 * hash, insert. Returns NULL on success, else a static description of what failed. */
static const char *write_rows(Appender *self, row_t *rows, Py_ssize_t n, const buf_t *arena,
                              long long *seq, unsigned char hash[32], unsigned char *accepted) {
    buf_t c = {0};
    const char *fail = NULL;
    sqlite3_stmt *ins = self->insert;
    for (Py_ssize_t r = 0; r < n && !fail; r++) {
        value_t *v = rows[r].v;
        accepted[r] = 0;
        if (rows[r].skip)
            continue;
        v[F_SEQ].kind = V_INT;
        v[F_SEQ].i = *seq + 1;
        unsigned char lkey[16], rkey[16];
        int lv4, rv4;
        int has_l = v[F_LADDR].kind != V_NULL &&
                    addr_key(text_ptr(&v[F_LADDR], arena), v[F_LADDR].n, lkey, &lv4);
        int has_r = v[F_RADDR].kind != V_NULL &&
                    addr_key(text_ptr(&v[F_RADDR], arena), v[F_RADDR].n, rkey, &rv4);
        if (v[F_FAMILY].kind == V_NULL && (has_r || has_l)) {
            /* the first address that parses, remote first (Journal's rule) */
            int v4 = has_r ? rv4 : lv4;
            v[F_FAMILY].kind = V_TEXT;
            v[F_FAMILY].s = v4 ? "ipv4" : "ipv6";
            v[F_FAMILY].n = 4;
        }
        c.len = 0;
        unsigned int mdlen;
        unsigned char next[32];
        if (buf_put(&c, (const char *)hash, 32) || canonical(&c, v, arena)) {
            fail = "out of memory";
            break;
        }
        if (!EVP_DigestInit_ex(self->md_ctx, self->md, NULL) ||
            !EVP_DigestUpdate(self->md_ctx, c.p, c.len) ||
            !EVP_DigestFinal_ex(self->md_ctx, next, &mdlen)) {
            fail = "sha256";
            break;
        }
        int rc = SQLITE_OK;
        for (int k = 0; k < NFIELDS && rc == SQLITE_OK; k++)
            rc = bind_value(ins, k + 1, &v[k], arena);
        if (rc == SQLITE_OK)
            rc = has_l ? sqlite3_bind_blob(ins, NFIELDS + 1, lkey, 16, SQLITE_STATIC)
                       : sqlite3_bind_null(ins, NFIELDS + 1);
        if (rc == SQLITE_OK)
            rc = has_r ? sqlite3_bind_blob(ins, NFIELDS + 2, rkey, 16, SQLITE_STATIC)
                       : sqlite3_bind_null(ins, NFIELDS + 2);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_blob(ins, NFIELDS + 3, next, 32, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(ins);
        sqlite3_reset(ins);
        /* an ident already journaled in this receiver (the unique index says so): the
         * entry is left out, seq and chain stay where they were */
        if (rc == SQLITE_CONSTRAINT && sqlite3_extended_errcode(self->db) == SQLITE_CONSTRAINT_UNIQUE &&
            v[F_IDENT].kind != V_NULL)
            continue;
        if (rc != SQLITE_DONE && rc != SQLITE_OK) {
            fail = "insert";
            break;
        }
        memcpy(hash, next, 32);
        *seq += 1;
        accepted[r] = 1;
    }
    free(c.p);
    return fail;
}

PyDoc_STRVAR(append_doc,
"append(entries, seq, prev_hash, host, internal_ok=False, skip=None) -> (seq, hash, accepted)\n\n"
"Check, chain and insert Entry objects after (seq, prev_hash), inside the caller's\n"
"transaction. Entries whose ident is already in this receiver (or in the set skip) are\n"
"left out; the others get seq numbers (also set on the objects). ValueError names the\n"
"first bad entry before anything is written; WriteError means SQLite failed mid-way.");

static PyObject *Appender_append(Appender *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"entries", "seq", "prev_hash", "host", "internal_ok", "skip", NULL};
    PyObject *entries_in, *skip = Py_None, *host_obj;
    long long seq;
    Py_buffer prev;
    int internal_ok = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLy*U|pO", kwlist, &entries_in, &seq, &prev,
                                     &host_obj, &internal_ok, &skip))
        return NULL;
    PyObject *result = NULL, *entries = NULL, **objs = NULL;
    row_t *rows = NULL;
    unsigned char *accepted = NULL;
    buf_t arena = {0};
    Py_ssize_t n = 0;
    if (prev.len != 32) {
        PyErr_SetString(PyExc_ValueError, "prev_hash must be 32 bytes");
        goto out;
    }
    if (!self->db) {
        PyErr_SetString(PyExc_RuntimeError, "Appender is closed");
        goto out;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Appender used from two threads at once");
        goto out;
    }
    /* a tuple: the caller's list may change while the GIL is released */
    if (!(entries = PySequence_Tuple(entries_in)))
        goto out;
    n = PyTuple_GET_SIZE(entries);
    value_t host = {V_TEXT, 0, NULL, 0};
    if (!(host.s = PyUnicode_AsUTF8AndSize(host_obj, &host.n)))
        goto out;
    rows = calloc((size_t)n + 1, sizeof *rows);
    objs = calloc(((size_t)n + 1) * NFIELDS, sizeof *objs);
    accepted = calloc((size_t)n + 1, 1);
    if (!rows || !objs || !accepted) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyTuple_GET_ITEM(entries, i);
        if (read_entry(self, e, i, internal_ok, &host, &arena, &rows[i], objs + i * NFIELDS) < 0)
            goto out;
        if (skip != Py_None && rows[i].v[F_IDENT].kind != V_NULL) {
            int r = PySequence_Contains(skip, objs[i * NFIELDS + F_IDENT]);
            if (r < 0)
                goto out;
            rows[i].skip = r;
        }
    }
    unsigned char hash[32];
    memcpy(hash, prev.buf, 32);
    long long first = seq;
    const char *fail;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    fail = write_rows(self, rows, n, &arena, &seq, hash, accepted);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (fail) {
        sqlite_error(self, fail);
        goto out;
    }
    /* seq numbers onto the Entry objects, as Journal.append promises */
    long long next = first;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!accepted[i])
            continue;
        PyObject *s = PyLong_FromLongLong(++next);
        if (!s || PyObject_SetAttr(PyTuple_GET_ITEM(entries, i), field_names[F_SEQ], s) < 0) {
            Py_XDECREF(s);
            goto out;
        }
        Py_DECREF(s);
    }
    result = Py_BuildValue("Ly#n", seq, (const char *)hash, (Py_ssize_t)32, (Py_ssize_t)(seq - first));
out:
    if (objs)
        for (Py_ssize_t k = 0; k < n * NFIELDS; k++)
            Py_XDECREF(objs[k]);
    free(objs);
    free(rows);
    free(accepted);
    free(arena.p);
    Py_XDECREF(entries);
    PyBuffer_Release(&prev);
    return result;
}

static PyObject *Appender_exec(Appender *self, const char *sql, const char *what) {
    if (!self->db) {
        PyErr_SetString(PyExc_RuntimeError, "Appender is closed");
        return NULL;
    }
    if (exec_nogil(self, sql) != SQLITE_OK)
        return sqlite_error(self, what);
    Py_RETURN_NONE;
}

static PyObject *Appender_begin(Appender *self, PyObject *unused) {
    return Appender_exec(self, "BEGIN IMMEDIATE", "begin");
}

static PyObject *Appender_commit(Appender *self, PyObject *unused) {
    return Appender_exec(self, "COMMIT", "commit");
}

static PyObject *Appender_rollback(Appender *self, PyObject *unused) {
    if (self->db && !sqlite3_get_autocommit(self->db))
        exec_nogil(self, "ROLLBACK");
    Py_RETURN_NONE;
}

static PyObject *Appender_close(Appender *self, PyObject *unused) {
    if (self->db) {
        if (!sqlite3_get_autocommit(self->db))
            sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_finalize(self->insert);
        self->insert = NULL;
        sqlite3_close_v2(self->db);
        self->db = NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Appender_methods[] = {
    {"append", (PyCFunction)(void (*)(void))Appender_append, METH_VARARGS | METH_KEYWORDS, append_doc},
    {"begin", (PyCFunction)Appender_begin, METH_NOARGS, "BEGIN IMMEDIATE (waits for the write lock)"},
    {"commit", (PyCFunction)Appender_commit, METH_NOARGS, "COMMIT (synced as the connection's synchronous says)"},
    {"rollback", (PyCFunction)Appender_rollback, METH_NOARGS, "ROLLBACK, if a transaction is open"},
    {"close", (PyCFunction)Appender_close, METH_NOARGS, "close the connection (rolls back an open transaction)"},
    {NULL},
};

static PyTypeObject AppenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sockgate.journal._append.Appender",
    .tp_basicsize = sizeof(Appender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Appender(path, sync, codes, types, sources, outcomes, internal, dump_extra): "
              "the journal's C write path into one receiver file",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Appender_init,
    .tp_dealloc = (destructor)Appender_dealloc,
    .tp_methods = Appender_methods,
};

/* ---------------------------------------------------------------- the Reader object
 *
 * The read path for long scans (Journal.decisions: replay and learn read every decision of
 * the journal). Why C: the sqlite3 module spends ~2.7 us per 16-column row converting
 * values (SQLite itself ~0.2 us), and makes a new str for every text value although most
 * repeat row after row (type, source, host, outcome, rule, user, program, extra). Here a
 * page of rows is stepped with the GIL released into a flat buffer, then turned into tuples
 * with each text value looked up in a bounded table of strs already made (`intern`): a
 * repeated value is the same object again, its hash already computed, so the caller's dict
 * lookups on it are a pointer compare. Same libsqlite3 as the sqlite3 module (checked at
 * import), its own connection; values as the sqlite3 module gives them (text strictly
 * UTF-8: a damaged text is a UnicodeDecodeError). */

#define INTERN_SLOTS (1 << 14) /* direct-mapped: a new value replaces the slot's old one */
#define INTERN_MAX_LEN 1024    /* longer texts are made fresh each time (rare, likely unique) */
#define KEEP_ARENA (64u << 20) /* bytes of a page's text and blobs kept for the next, likewise */
#define KEEP_CELLS (1 << 20)   /* buffers of a page up to this many values are kept for the next */

typedef struct {
    PyObject *s;      /* the str (NULL: empty slot) */
    const char *u8;   /* its UTF-8 (owned by s) */
    Py_ssize_t n;
    uint64_t h;
} islot_t;

typedef struct { /* one stepped value; text and blobs live in the page's arena at off */
    int type;
    union { long long i; double d; size_t off; } v;
    size_t n;
} cell_t;

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *st;
    char *sql;        /* text st was prepared from */
    islot_t *slots;
    cell_t *cells;    /* the page being read, kept for the next (a scan reads many) */
    size_t cap;
    buf_t arena;
    int busy;
} Reader;

/* FNV-1a over 8-byte words (then the tail): only picks a slot, equality is memcmp */
static uint64_t text_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL ^ n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 1099511628211ULL;
        h ^= h >> 29;
    }
    for (; n; s++, n--)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h ^ (h >> 32);
}

/* A new reference to a str of the UTF-8 text s[0:n]: the table's, when it has it. */
static PyObject *intern_text(Reader *self, const char *s, size_t n) {
    if (n > INTERN_MAX_LEN)
        return PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, NULL);
    uint64_t h = text_hash(s, n);
    islot_t *slot = &self->slots[h & (INTERN_SLOTS - 1)];
    if (slot->s && slot->h == h && slot->n == (Py_ssize_t)n && memcmp(slot->u8, s, n) == 0) {
        Py_INCREF(slot->s);
        return slot->s;
    }
    PyObject *str = PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, NULL);
    if (!str)
        return NULL;
    Py_ssize_t len;
    const char *u8 = PyUnicode_AsUTF8AndSize(str, &len);
    if (!u8) {
        Py_DECREF(str);
        return NULL;
    }
    Py_XSETREF(slot->s, Py_NewRef(str));
    slot->u8 = u8;
    slot->n = len;
    slot->h = h;
    return str;
}

static void Reader_clear_slots(Reader *self) {
    if (self->slots)
        for (int k = 0; k < INTERN_SLOTS; k++)
            Py_CLEAR(self->slots[k].s);
}

static void Reader_drop_buffers(Reader *self) {
    free(self->cells);
    self->cells = NULL;
    self->cap = 0;
    free(self->arena.p);
    self->arena = (buf_t){0};
}

static PyObject *Reader_close(Reader *self, PyObject *unused) {
    if (self->busy) {   /* a fetch in another thread (or under it) still uses all of it */
        PyErr_SetString(PyExc_RuntimeError, "Reader is in use");
        return NULL;
    }
    if (self->st)
        sqlite3_finalize(self->st);
    self->st = NULL;
    free(self->sql);
    self->sql = NULL;
    if (self->db)
        sqlite3_close_v2(self->db);
    self->db = NULL;
    Reader_clear_slots(self);
    Reader_drop_buffers(self);
    Py_RETURN_NONE;
}

static void Reader_dealloc(Reader *self) {
    Py_XDECREF(Reader_close(self, NULL));
    free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "readonly", "busy_ms", "mmap_size", NULL};
    const char *path;
    int readonly = 1, busy_ms = 10000;
    long long mmap_size = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|p$iL", kwlist, &path, &readonly, &busy_ms, &mmap_size))
        return -1;
    if (busy_ms < 0 || mmap_size < 0) {
        PyErr_SetString(PyExc_ValueError, "busy_ms and mmap_size must be >= 0");
        return -1;
    }
    if (self->db) {
        PyErr_SetString(PyExc_RuntimeError, "Reader already initialised");
        return -1;
    }
    if (!self->slots && !(self->slots = calloc(INTERN_SLOTS, sizeof *self->slots))) {
        PyErr_NoMemory();
        return -1;
    }
    /* SQLITE_OPEN_READONLY is what the sqlite3 module's "file:...?mode=ro" asks for */
    int flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &self->db, flags, NULL) != SQLITE_OK) {
        raise_sqlite(self->db, ReadError, path);
        return -1;
    }
    char pragmas[120];
    snprintf(pragmas, sizeof pragmas, "PRAGMA busy_timeout=%d; PRAGMA mmap_size=%lld;", busy_ms, mmap_size);
    if (sqlite3_exec(self->db, pragmas, NULL, NULL, NULL) != SQLITE_OK) {
        raise_sqlite(self->db, ReadError, path);
        return -1;
    }
    return 0;
}

/* Bind params (a tuple of None, int, float, str, bytes) to st; the objects outlive the step. */
static int bind_params(sqlite3_stmt *st, PyObject *params) {
    Py_ssize_t n = PyTuple_GET_SIZE(params);
    if (n != sqlite3_bind_parameter_count(st)) {
        PyErr_Format(PyExc_ValueError, "%zd parameters for %d placeholders", n, sqlite3_bind_parameter_count(st));
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *o = PyTuple_GET_ITEM(params, k);
        int col = (int)k + 1, rc;
        if (o == Py_None) {
            rc = sqlite3_bind_null(st, col);
        } else if (PyLong_Check(o)) {
            long long v = PyLong_AsLongLong(o);
            if (v == -1 && PyErr_Occurred())
                return -1;
            rc = sqlite3_bind_int64(st, col, v);
        } else if (PyFloat_Check(o)) {
            rc = sqlite3_bind_double(st, col, PyFloat_AS_DOUBLE(o));
        } else if (PyUnicode_Check(o)) {
            Py_ssize_t len;
            const char *u8 = PyUnicode_AsUTF8AndSize(o, &len);
            if (!u8)
                return -1;
            rc = sqlite3_bind_text64(st, col, u8, (sqlite3_uint64)len, SQLITE_STATIC, SQLITE_UTF8);
        } else if (PyBytes_Check(o)) {
            rc = sqlite3_bind_blob64(st, col, PyBytes_AS_STRING(o), (sqlite3_uint64)PyBytes_GET_SIZE(o),
                                     SQLITE_STATIC);
        } else {
            PyErr_Format(PyExc_TypeError, "parameter %zd: unsupported type %.80s", k + 1, Py_TYPE(o)->tp_name);
            return -1;
        }
        if (rc != SQLITE_OK) {
            PyErr_Format(PyExc_ValueError, "parameter %zd: cannot bind (SQLite code %d)", k + 1, rc);
            return -1;
        }
    }
    return 0;
}

/* Step st to the end into cells (ncol per row) and arena; GIL released by the caller.
 * Returns the final result code (SQLITE_DONE when all went well; -1: out of memory). */
static int step_all(sqlite3_stmt *st, int ncol, cell_t **cells, size_t *cap, size_t *nrows, buf_t *arena) {
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((*nrows + 1) * (size_t)ncol > *cap) {
            size_t c = *cap ? *cap * 2 : (size_t)ncol * 1024;
            cell_t *p = realloc(*cells, c * sizeof *p);
            if (!p)
                return -1;
            *cells = p;
            *cap = c;
        }
        cell_t *row = *cells + *nrows * (size_t)ncol;
        for (int k = 0; k < ncol; k++) {
            cell_t *c = &row[k];
            c->type = sqlite3_column_type(st, k);
            switch (c->type) {
            case SQLITE_INTEGER: c->v.i = sqlite3_column_int64(st, k); break;
            case SQLITE_FLOAT: c->v.d = sqlite3_column_double(st, k); break;
            case SQLITE_TEXT:
            case SQLITE_BLOB: {
                const void *p = c->type == SQLITE_TEXT ? (const void *)sqlite3_column_text(st, k)
                                                       : sqlite3_column_blob(st, k);
                c->n = (size_t)sqlite3_column_bytes(st, k);
                c->v.off = arena->len;
                if (c->n && buf_put(arena, p, c->n) < 0)
                    return -1;
                break;
            }
            default: break;
            }
        }
        (*nrows)++;
    }
    return rc;
}

static PyObject *cell_value(Reader *self, const cell_t *c, const buf_t *arena) {
    switch (c->type) {
    case SQLITE_INTEGER: return PyLong_FromLongLong(c->v.i);
    case SQLITE_FLOAT: return PyFloat_FromDouble(c->v.d);
    case SQLITE_TEXT: return intern_text(self, c->n ? arena->p + c->v.off : "", c->n);
    case SQLITE_BLOB: return PyBytes_FromStringAndSize(c->n ? arena->p + c->v.off : "", (Py_ssize_t)c->n);
    default: Py_RETURN_NONE;
    }
}

PyDoc_STRVAR(fetch_doc,
"fetch(sql, params=()) -> list of tuples\n\n"
"Every row of one SELECT, as Connection.execute(sql, params).fetchall() gives them, with\n"
"repeated text values shared (one str object per distinct value, within a bounded table).\n"
"The statement is kept prepared while the same sql text comes again (a scan's pages).");

static PyObject *Reader_fetch(Reader *self, PyObject *args) {
    const char *sql;
    PyObject *params_in = NULL;
    if (!PyArg_ParseTuple(args, "s|O", &sql, &params_in))
        return NULL;
    if (!self->db) {
        PyErr_SetString(PyExc_RuntimeError, "Reader is closed");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Reader used from two threads at once");
        return NULL;
    }
    if (!self->sql || strcmp(self->sql, sql) != 0) {
        sqlite3_finalize(self->st);
        self->st = NULL;
        free(self->sql);
        self->sql = NULL;
        const char *tail = NULL;
        if (sqlite3_prepare_v3(self->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &self->st, &tail) != SQLITE_OK)
            return raise_sqlite(self->db, ReadError, "prepare");
        if (!self->st) {
            PyErr_SetString(PyExc_ValueError, "no SQL statement");
            return NULL;
        }
        while (tail && (*tail == ' ' || *tail == '\t' || *tail == '\n' || *tail == '\r' || *tail == ';'))
            tail++;
        if (tail && *tail) {   /* as sqlite3's execute: one statement, not the first of several */
            sqlite3_finalize(self->st);
            self->st = NULL;
            PyErr_SetString(PyExc_ValueError, "one SQL statement at a time");
            return NULL;
        }
        if (!(self->sql = strdup(sql)))
            return PyErr_NoMemory();
    }
    PyObject *params = params_in ? PySequence_Tuple(params_in) : PyTuple_New(0);
    if (!params)
        return NULL;
    PyObject *out = NULL;
    size_t nrows = 0;
    self->busy = 1;   /* from here to done: the buffers and the statement are this call's */
    self->arena.len = 0;
    sqlite3_stmt *st = self->st;
    int ncol = sqlite3_column_count(st), rc;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (bind_params(st, params) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = step_all(st, ncol, &self->cells, &self->cap, &nrows, &self->arena);
    Py_END_ALLOW_THREADS
    /* still busy while the tuples are built: that allocates, so the collector can run
       finalizers that might fetch or close with this Reader (refused until done:) */
    if (rc == -1) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc != SQLITE_DONE) {
        raise_sqlite(self->db, ReadError, "step");
        goto done;
    }
    if (!(out = PyList_New((Py_ssize_t)nrows)))
        goto done;
    for (size_t r = 0; r < nrows; r++) {
        PyObject *t = PyTuple_New(ncol);
        if (!t)
            goto fail;
        PyList_SET_ITEM(out, (Py_ssize_t)r, t);
        for (int k = 0; k < ncol; k++) {
            PyObject *v = cell_value(self, &self->cells[r * (size_t)ncol + (size_t)k], &self->arena);
            if (!v)
                goto fail;
            PyTuple_SET_ITEM(t, k, v);
        }
        /* only str, int, float, bytes, None: no cycle can go through it, so the collector
           need not visit it (CPython untracks such tuples itself, at its next collection) */
        PyObject_GC_UnTrack(t);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    self->busy = 0;
    sqlite3_reset(st);   /* ends the statement's read transaction */
    sqlite3_clear_bindings(st);
    if (self->cap > KEEP_CELLS || self->arena.cap > KEEP_ARENA)   /* one huge fetch does not pin its buffers */
        Reader_drop_buffers(self);
    Py_DECREF(params);
    return out;
}

static PyMethodDef Reader_methods[] = {
    {"fetch", (PyCFunction)Reader_fetch, METH_VARARGS, fetch_doc},
    {"close", (PyCFunction)Reader_close, METH_NOARGS, "close the connection and drop the shared strs"},
    {NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sockgate.journal._append.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(path, readonly=True, *, busy_ms=10000, mmap_size=0): the journal's C read "
              "path for long scans of one receiver file",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
};

/* canonical(values) for the cross-check with store.canonical (tests only). */
static PyObject *py_canonical(PyObject *mod, PyObject *seq_in) {
    PyObject *t = PySequence_Tuple(seq_in);
    if (!t)
        return NULL;
    if (PyTuple_GET_SIZE(t) != NFIELDS) {
        Py_DECREF(t);
        return PyErr_Format(PyExc_ValueError, "need %d values", NFIELDS);
    }
    value_t v[NFIELDS];
    buf_t arena = {0}, out = {0};
    PyObject *res = NULL;
    for (int k = 0; k < NFIELDS; k++) {
        PyObject *o = PyTuple_GET_ITEM(t, k);
        v[k].kind = V_NULL;
        if (o == Py_None)
            continue;
        if (PyLong_CheckExact(o)) {
            int overflow;
            v[k].i = PyLong_AsLongLongAndOverflow(o, &overflow);
            if (overflow) {
                PyErr_SetString(PyExc_OverflowError, "int out of range");
                goto done;
            }
            v[k].kind = V_INT;
        } else if (text_of(o, &v[k]) <= 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "values must be int, str or None");
            goto done;
        }
    }
    if (canonical(&out, v, &arena)) {
        PyErr_NoMemory();
        goto done;
    }
    res = PyBytes_FromStringAndSize(out.p, (Py_ssize_t)out.len);
done:
    free(out.p);
    Py_DECREF(t);
    return res;
}

static PyMethodDef module_methods[] = {
    {"canonical", py_canonical, METH_O, "canonical(values) -> bytes, as store.canonical"},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "sockgate.journal._append",
    "The journal's write path, and its read path for long scans, in C (see _append.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__append(void) {
    if (PyType_Ready(&AppenderType) < 0 || PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    PyObject *names = PyTuple_New(NFIELDS);
    if (!names)
        return NULL;
    for (int k = 0; k < NFIELDS; k++) {
        if (!(field_names[k] = PyUnicode_InternFromString(FIELD_NAMES[k])))
            return NULL;
        Py_INCREF(field_names[k]);
        PyTuple_SET_ITEM(names, k, field_names[k]);
    }
    WriteError = PyErr_NewException("sockgate.journal._append.WriteError", NULL, NULL);
    BusyError = WriteError ? PyErr_NewException("sockgate.journal._append.BusyError", WriteError, NULL) : NULL;
    ReadError = PyErr_NewException("sockgate.journal._append.ReadError", NULL, NULL);
    if (!WriteError || !BusyError || !ReadError || PyModule_AddObject(m, "FIELDS", names) < 0 ||
        PyModule_AddObjectRef(m, "WriteError", WriteError) < 0 ||
        PyModule_AddObjectRef(m, "BusyError", BusyError) < 0 ||
        PyModule_AddObjectRef(m, "ReadError", ReadError) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddStringConstant(m, "SQLITE_VERSION", sqlite3_libversion()) < 0 ||
        PyModule_AddObjectRef(m, "Appender", (PyObject *)&AppenderType) < 0)
        return NULL;
    return m;
}
