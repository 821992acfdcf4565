"""One TOML loader for sockgate's configuration files (the policy and the alert rules):
line numbers by key path (locate), every error collected as FILE:LINE (document), and
named lists with negation (lists). Imports nothing above sockgate.record and errors."""

from sockgate.config.document import Collector, parse, read
from sockgate.config.lists import Lists, as_list, expand, read_lists, suggest
from sockgate.config.locate import Locator

__all__ = ["Collector", "Lists", "Locator", "as_list", "expand", "parse", "read", "read_lists", "suggest"]
