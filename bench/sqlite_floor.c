/* What SQLite alone can insert with the journal's schema: prebuilt rows through the C API,
 * no Python, one transaction, WAL + synchronous=FULL, for each index variant. The floor
 * under `sockgate ibmi import` and the daemon's journal writer (bench/README.md).
 *
 *   gcc -O2 bench/sqlite_floor.c -lsqlite3 -o bench/out/sqlite_floor && bench/out/sqlite_floor [rows] [pragmas]
 *   (rows = 0 prints the settings in effect)
 *
 * pragmas: extra SQL run before the schema, e.g. "PRAGMA page_size=16384;" or
 * "PRAGMA cache_size=-1048576;" (the variants bench/README.md reports).
 *
 * Rows look like imported IBM i entries: ~170-byte extra JSON, increasing idents and
 * timestamps, remote addresses spread over 10.0-6.x.x. The database is a temporary file.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TABLE \
    "CREATE TABLE entry (seq INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, code TEXT NOT NULL," \
    " type TEXT NOT NULL, source TEXT NOT NULL, host TEXT NOT NULL, outcome TEXT, rule TEXT," \
    " uid INTEGER, user TEXT, gid INTEGER, pid INTEGER, program TEXT, family TEXT," \
    " local_addr TEXT, local_port INTEGER, remote_addr TEXT, remote_port INTEGER," \
    " extra TEXT NOT NULL, ident TEXT, local_key BLOB, remote_key BLOB, hash BLOB NOT NULL);"
#define IDX_TS "CREATE INDEX entry_ts ON entry (ts_ns);"
#define IDX_IDENT "CREATE UNIQUE INDEX entry_ident ON entry (ident) WHERE ident IS NOT NULL;"
#define IDX_REMOTE "CREATE INDEX entry_outcome_remote ON entry (outcome, remote_key, ts_ns);"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void check(sqlite3 *db, int rc, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE) {
        fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

/* rows/s for: schema before the load, statements after it (still in the transaction) */
static const char *pragmas = "";

static double run(int n, const char *before, const char *after) {
    char path[] = "/tmp/sockgate-sqlite-floor-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    unlink(path);
    sqlite3 *db;
    check(db, sqlite3_open(path, &db), "open");
    check(db, sqlite3_exec(db, "PRAGMA cache_size=-32768;", 0, 0, 0), "cache");
    check(db, sqlite3_exec(db, pragmas, 0, 0, 0), "pragmas");  /* page_size: before WAL and the first table */
    check(db, sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;" TABLE, 0, 0, 0), "schema");
    check(db, sqlite3_exec(db, before, 0, 0, 0), "indexes");
    if (n == 0) {  /* rows = 0: show the settings in effect */
        sqlite3_stmt *q;
        const char *names[] = {"page_size", "cache_size", "journal_mode", "threads"};
        for (int k = 0; k < 4; k++) {
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA %s", names[k]);
            sqlite3_prepare_v2(db, sql, -1, &q, 0);
            if (sqlite3_step(q) == SQLITE_ROW)
                printf("  %s = %s\n", names[k], sqlite3_column_text(q, 0));
            sqlite3_finalize(q);
        }
    }
    sqlite3_stmt *st;
    check(db, sqlite3_prepare_v2(db, "INSERT INTO entry VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                 -1, &st, 0), "prepare");
    char ra[32], extra[256], ident[32];
    unsigned char lkey[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 10};
    unsigned char rkey[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0}, hash[32];
    double t = now();
    check(db, sqlite3_exec(db, "BEGIN", 0, 0, 0), "begin");
    for (int i = 0; i < n; i++) {
        int a = i % 7, b = (i / 7) % 256, c = i % 250;
        snprintf(ra, sizeof ra, "10.%d.%d.%d", a, b, c);
        rkey[13] = a, rkey[14] = b, rkey[15] = c;
        snprintf(extra, sizeof extra, "{\"ibmi_receiver\":\"QSYS/QAUDRCV001\",\"ibmi_seq\":%d,"
                 "\"ibmi_timestamp\":\"2026-11-24-10.00.00.000000\",\"job\":\"123456/QUSER/QZDASOINIT\","
                 "\"socket_descriptor\":5}", i + 1);
        snprintf(ident, sizeof ident, "SYSA:%d", i + 1);
        for (int k = 0; k < 32; k++)
            hash[k] = (unsigned char)rand();
        sqlite3_bind_int64(st, 1, i + 1);
        sqlite3_bind_int64(st, 2, 1795500000000000000LL + i * 2000000LL);
        sqlite3_bind_text(st, 3, "SK", 2, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, "C", 1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, "ibmi", 4, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, "SYSA", 4, SQLITE_STATIC);
        sqlite3_bind_text(st, 7, i % 3 ? "allowed" : "failed", -1, SQLITE_STATIC);
        sqlite3_bind_null(st, 8);
        sqlite3_bind_null(st, 9);
        sqlite3_bind_text(st, 10, "QUSER", 5, SQLITE_STATIC);
        sqlite3_bind_null(st, 11);
        sqlite3_bind_null(st, 12);
        sqlite3_bind_text(st, 13, "QSYS/QTCP", 9, SQLITE_STATIC);
        sqlite3_bind_text(st, 14, "ipv4", 4, SQLITE_STATIC);
        sqlite3_bind_text(st, 15, "192.168.1.10", 12, SQLITE_STATIC);
        sqlite3_bind_int(st, 16, 4000 + i % 100);
        sqlite3_bind_text(st, 17, ra, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 18, 443);
        sqlite3_bind_text(st, 19, extra, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 20, ident, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 21, lkey, 16, SQLITE_STATIC);
        sqlite3_bind_blob(st, 22, rkey, 16, SQLITE_STATIC);
        sqlite3_bind_blob(st, 23, hash, 32, SQLITE_STATIC);
        check(db, sqlite3_step(st), "insert");
        sqlite3_reset(st);
    }
    check(db, sqlite3_exec(db, after, 0, 0, 0), "after");
    check(db, sqlite3_exec(db, "COMMIT", 0, 0, 0), "commit");
    double rate = n / (now() - t);
    sqlite3_finalize(st);
    sqlite3_close(db);
    char side[64];
    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    return rate;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000000;
    if (argc > 2)
        pragmas = argv[2];
    struct { const char *name, *before, *after; } v[] = {
        {"entry table alone", "", ""},
        {"+ ts_ns and unique ident", IDX_TS IDX_IDENT, ""},
        {"+ (outcome, remote_key, ts_ns) only", IDX_REMOTE, ""},
        {"all three (the journal's schema)", IDX_TS IDX_IDENT IDX_REMOTE, ""},
        {"table first, CREATE INDEX x3 after", "", IDX_TS IDX_IDENT IDX_REMOTE},
    };
    printf("SQLite %s, %d rows per run, one transaction, WAL, synchronous=FULL %s\n", sqlite3_libversion(), n, pragmas);
    if (n == 0) {
        run(0, "", "");
        return 0;
    }
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++)
        printf("%-40s %10.0f rows/s\n", v[k].name, run(n, v[k].before, v[k].after));
    return 0;
}
