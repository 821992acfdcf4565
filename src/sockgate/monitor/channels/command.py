"""Command: run a program (no shell) with the alert as JSON on stdin.

Environment: SOCKGATE_ALERT_ID, SOCKGATE_ALERT, SOCKGATE_SEVERITY, SOCKGATE_MESSAGE,
SOCKGATE_COUNT, plus `env` from the channel. Exit status 0 means delivered; anything else
(or a timeout) is retried. The command may be run twice for one alert if the monitor dies
between the command's exit and recording it: use SOCKGATE_ALERT_ID to drop repeats.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from sockgate.errors import ChannelError
from sockgate.monitor.channels import Channel, _strlist, _strtable


class CommandChannel(Channel):
    type = "command"
    OPTIONS = {"argv": _strlist, "env": _strtable}
    REQUIRED = frozenset({"argv"})

    def send(self, alert: dict[str, Any]) -> None:
        argv = self.opts["argv"]
        env = dict(os.environ)
        env.update(self.opts.get("env", {}))
        env.update({"SOCKGATE_ALERT_ID": alert["id"], "SOCKGATE_ALERT": alert["alert"],
                    "SOCKGATE_SEVERITY": alert["severity"], "SOCKGATE_MESSAGE": alert["message"],
                    "SOCKGATE_COUNT": str(alert["count"])})
        try:
            p = subprocess.run(argv, input=json.dumps(alert).encode() + b"\n", env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=self.timeout,
                               close_fds=True)
        except subprocess.TimeoutExpired:
            raise ChannelError(f"command {argv[0]}: timed out after {self.timeout:g}s") from None
        except OSError as e:
            raise ChannelError(f"command {argv[0]}: {e.strerror or e}") from None
        if p.returncode != 0:
            err = p.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ChannelError(f"command {argv[0]}: exit status {p.returncode}" + (f": {err[-1]}" if err else ""))


CHANNEL = CommandChannel
