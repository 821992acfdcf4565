"""The line locator the policy and the alert rules use for semantic errors."""

from __future__ import annotations

from sockgate.config.locate import Locator

TEXT = '''\
mode = "audit"            # 1
errno.x = 1               # 2 (dotted)
[defaults]                # 3
connect = "allow"         # 4
"listen" = 'allow'        # 5
[lists]                   # 6
a = [                     # 7
  "x", # ] not closing    # 8
  "]",                    # 9
]                         # 10
b = """                   # 11
[[rule]]
c = 1
"""                       # 14
[[rule]]                  # 15
name = "one"              # 16
user = [                  # 17
  [1, [2]],               # 18
  {k = "v"}, ]            # 19
action = 'x'              # 20
[rule.sub]                # 21
q = 1                     # 22
  [[ rule ]]              # 23
exit = "connect"          # 24
'''


def test_locator():
    loc = Locator(TEXT)
    assert loc.find("mode") == 1
    assert loc.find("errno") == 2 and loc.find("errno", "x") == 2
    assert loc.find("defaults") == 3
    assert loc.find("defaults", "connect") == 4
    assert loc.find("defaults", "listen") == 5
    assert loc.find("lists", "a") == 7 and loc.find("lists", "b") == 11
    assert loc.find("rule") == 15
    assert loc.find("rule", 0) == 15 and loc.find("rule", 1) == 23 and loc.find("rule", 2) is None
    assert loc.find("rule", 0, "name") == 16 and loc.find("rule", 0, "user") == 17
    assert loc.find("rule", 0, "action") == 20 and loc.find("rule", 0, "sub") == 21
    assert loc.find("rule", 0, "q") is None and loc.find("rule", 0, "sub", "q") == 22
    assert loc.find("rule", 1, "exit") == 24 and loc.find("rule", 1, "name") is None
    assert loc.find("nope") is None and loc.line("nope", 3) is None
    assert loc.line("rule", 1, "name") == 23 and loc.line("rule", 7) == 15  # nearest enclosing


ALERTS = '''\
[channel.syslog]          # 1
type = "syslog"           # 2
[[alert]]                 # 3
name = "a"                # 4
match = { user = "x" }    # 5
[[alert]]                 # 6
name = "b"                # 7
match.remote_port = 1     # 8
[alert.match]             # 9
user = "y"                # 10
'''


def test_locator_arrays_of_tables_and_subtables():
    loc = Locator(ALERTS)
    assert loc.find("channel", "syslog") == 1 and loc.find("channel", "syslog", "type") == 2
    assert loc.find("alert", 0) == 3 and loc.line("alert", 0, "match", "user") == 5
    assert loc.find("alert", 1, "match", "remote_port") == 8
    assert loc.find("alert", 1, "match", "user") == 10


def test_locator_never_raises_on_garbage():
    for text in ["", "[", "[[", '"', "'''", "a.b.c. = 1", "[a.'b", "= 1", "\x00\n[[rule]\n", "[" * 1000]:
        Locator(text)
    assert Locator("[" * 1000).deep_nesting_line is None  # a header line, not a value
    assert Locator("x = " + "[" * 1000).deep_nesting_line == 1
