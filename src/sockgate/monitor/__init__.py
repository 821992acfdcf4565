"""The event monitor: alert rules over the journal, delivered once, reliably.

    from sockgate.monitor import Monitor
    m = Monitor.open(rules_file, journal_dir, state_dir)   # RulesErrors on a bad file
    m.run(stop_event, poll_interval=0.5)                   # or m.step() -> alerts raised

parse.py (rules file → model.py, match.py; FILE:LINE) → engine.py (match, windows, dedup; pure) →
state.py (cursor + state + outbox, one transaction) → channels/ (syslog, email, webhook,
command). See docs/monitor.md.
"""

from sockgate.monitor.engine import Alert, Engine
from sockgate.monitor.monitor import DEFAULT_STATE, Monitor, replay
from sockgate.monitor.parse import load_rules, parse_rules
from sockgate.monitor.model import RuleSet

__all__ = ["Alert", "DEFAULT_STATE", "Engine", "Monitor", "RuleSet", "load_rules", "parse_rules", "replay"]
