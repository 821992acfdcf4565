"""Command: run a program (no shell) with the alert as JSON on stdin.

Environment: SOCKGATE_ALERT_ID, SOCKGATE_ALERT, SOCKGATE_KIND, SOCKGATE_SEVERITY,
SOCKGATE_MESSAGE, SOCKGATE_COUNT, plus `env` from the channel (a checkpoint: SOCKGATE_KIND
"checkpoint", SOCKGATE_MESSAGE its JSON line). Exit status 0 means delivered; anything else
(or a timeout) is retried. The command may be run twice for one alert if the monitor dies
between the command's exit and recording it: use SOCKGATE_ALERT_ID to drop repeats.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from sockgate.errors import ChannelError
from sockgate.monitor.channels import Channel, _argv, _env
from sockgate.record import oneline


class CommandChannel(Channel):
    type = "command"
    OPTIONS = {"argv": _argv, "env": _env}
    REQUIRED = frozenset({"argv"})

    def send(self, alert: dict[str, Any]) -> None:
        argv = self.opts["argv"]
        env = dict(os.environ)
        env.update(self.opts.get("env", {}))
        # one inert line each: a NUL would make every try fail, a newline forge a variable
        # for scripts that read `env` output
        env.update({k: oneline(v) for k, v in (
            ("SOCKGATE_ALERT_ID", alert["id"]), ("SOCKGATE_ALERT", alert["alert"]), ("SOCKGATE_KIND", alert["kind"]),
            ("SOCKGATE_SEVERITY", alert["severity"]), ("SOCKGATE_MESSAGE", alert["message"]),
            ("SOCKGATE_COUNT", alert["count"]))})
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
            raise ChannelError(f"command {argv[0]}: exit status {p.returncode}" + (f": {oneline(err[-1])}" if err else ""))


CHANNEL = CommandChannel
