"""The line locator used for semantic errors."""

from __future__ import annotations

from sockgate.policy.locate import Locator

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
    assert loc.top("mode") == 1
    assert loc.top("errno") == 2 and loc.table_key("errno", "x") == 2
    assert loc.table("defaults") == 3 and loc.top("defaults") == 3
    assert loc.table_key("defaults", "connect") == 4
    assert loc.table_key("defaults", "listen") == 5
    assert loc.table_key("lists", "a") == 7 and loc.table_key("lists", "b") == 11
    assert loc.rule(0) == 15 and loc.rule(1) == 23 and loc.rule(2) is None
    assert loc.rule_key(0, "name") == 16 and loc.rule_key(0, "user") == 17
    assert loc.rule_key(0, "action") == 20 and loc.rule_key(0, "sub") == 21
    assert loc.rule_key(0, "q") is None
    assert loc.rule_key(1, "exit") == 24 and loc.rule_key(1, "name") is None
    assert loc.top("nope") is None and loc.table("nope") is None


def test_locator_never_raises_on_garbage():
    for text in ["", "[", "[[", '"', "'''", "a.b.c. = 1", "[a.'b", "= 1", "\x00\n[[rule]\n", "[" * 1000]:
        Locator(text)
    assert Locator("[" * 1000).deep_nesting_line is None  # a header line, not a value
    assert Locator("x = " + "[" * 1000).deep_nesting_line == 1
