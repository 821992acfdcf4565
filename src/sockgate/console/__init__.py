"""The web console (`sockgate console`) and the static report (`sockgate report`).

    data.py    what both show, read from the journal (read-only), the policy, the daemon's counters
    app.py     the Starlette app: read-only pages, CSP, escaping, the Live stream (SSE)
    server.py  where it listens, and the refusals that keep it on this host by default
    report.py  one self-contained HTML file with inline SVG charts
"""

from __future__ import annotations

import os
from typing import Callable


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/sockgate when set; else /var/cache/sockgate for root, ~/.cache/sockgate
    for anyone else."""
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "sockgate")
    if os.geteuid() == 0:
        return "/var/cache/sockgate"
    return os.path.join(os.path.expanduser("~"), ".cache", "sockgate")


def serve(journal_dir: str, *, listen: str | None = None, socket_path: str | None = None,
          policy_file: str | None = None, metrics_url: str | None = None, candidate_file: str | None = None,
          key_file: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
          token_file: str | None = None, fleet_db: str | None = None, cache_dir: str | None = None,
          announce: Callable[[str], None] = print) -> None:
    """Check where to listen (refusing what is not safe), open the journal read-only, bind,
    and serve until SIGINT/SIGTERM. cache_dir: where the chart rollup is kept between runs
    (default: default_cache_dir()); one that is not safe to use is left alone, with a warning."""
    from sockgate import safedir
    from sockgate.console import server
    from sockgate.console.app import create_app
    from sockgate.console.data import Data
    from sockgate.errors import SockgateError

    b = server.plan(listen, socket_path, tls_cert, tls_key, token_file)
    try:
        cache = os.path.realpath(cache_dir or default_cache_dir())
        if os.path.commonpath([cache, os.path.realpath(journal_dir)]) == os.path.realpath(journal_dir):
            raise SockgateError(f"console cache directory {cache} is inside the journal (it must stay as written)")
        cache = str(safedir.private_dir(cache, error=SockgateError, what="console cache directory"))
    except SockgateError as e:
        announce(f"sockgate console: {e}; charts count the journal again at every start")
        cache = None
    data = Data(journal_dir, policy_file=policy_file, metrics_url=metrics_url, candidate_file=candidate_file,
                key_file=key_file, fleet_db=fleet_db, cache_dir=cache)
    try:
        if policy_file:
            data.policy()   # a broken policy file stops the start, with its errors
        if fleet_db:
            data.fleet()    # so does a fleet database that cannot be read
        sock = server.bind(b)
        data.start_rollup()
        announce(f"sockgate console: journal {journal_dir} on {b.url}" + (" (token required)" if b.token else ""))
        server.run(create_app(data, token=b.token, hosts=b.hosts()), b, sock)
    finally:
        data.close()
