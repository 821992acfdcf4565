"""Old home of the alert rules: now monitor/parse.py, model.py and match.py. Kept only for
bench/monitor_rules.py until it imports sockgate.monitor; delete it then."""

from sockgate.monitor.model import AlertRule, ChannelConfig, RuleSet  # noqa: F401
from sockgate.monitor.parse import load_rules, parse_rules  # noqa: F401
