"""The web console (`sockgate console`) and the static report (`sockgate report`).

    data.py    what both show, read from the journal (read-only), the policy, the daemon's counters
    app.py     the Starlette app: read-only pages, CSP, escaping, the Live stream (SSE)
    server.py  where it listens, and the refusals that keep it on this host by default
    report.py  one self-contained HTML file with inline SVG charts
"""

from __future__ import annotations

from typing import Callable


def serve(journal_dir: str, *, listen: str | None = None, socket_path: str | None = None,
          policy_file: str | None = None, metrics_url: str | None = None, candidate_file: str | None = None,
          key_file: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
          token_file: str | None = None, fleet_db: str | None = None, announce: Callable[[str], None] = print) -> None:
    """Check where to listen (refusing what is not safe), open the journal read-only, bind,
    and serve until SIGINT/SIGTERM."""
    from sockgate.console import server
    from sockgate.console.app import create_app
    from sockgate.console.data import Data

    b = server.plan(listen, socket_path, tls_cert, tls_key, token_file)
    data = Data(journal_dir, policy_file=policy_file, metrics_url=metrics_url, candidate_file=candidate_file,
                key_file=key_file, fleet_db=fleet_db)
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
