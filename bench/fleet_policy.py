"""Policy bundle bench: sign and verify time and size for a large policy, and the host's
`apply` wall time (dominated by the replay gate) over a day of journaled decisions.

    .venv/bin/python bench/fleet_policy.py                      # 10,000 rules, 200k decisions
    .venv/bin/python bench/fleet_policy.py --rules 16000 --count 1000000 --dir /var/tmp/sg-apply

The journal is written as bench/policy_replay.py writes it (sockgate.policy.synth through
Journal.append), over the last 24 h, once per --dir and reused. No daemon runs: apply ends "installed" (file swapped, state written).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

from policy_replay import generate  # noqa: E402  (bench/ is the script's directory)

from sockgate.fleet import apply as A  # noqa: E402
from sockgate.fleet import bundle as B  # noqa: E402


def big_policy(n: int) -> bytes:
    """n connect rules, each on its own address of 100.64.0.0/10 (none of synth's traffic)."""
    out = []
    for i in range(n):
        out.append(f'[[rule]]\nname = "r{i}"\nexit = ["connect"]\nremote = ["100.{64 + i // 65536 % 64}.'
                   f'{i // 256 % 256}.{i % 256}"]\nremote_port = [{1 + i % 60000}]\naction = "reject"\n')
    return "".join(out).encode()


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--count", type=int, default=200_000, help="journaled decisions in the last 24 h")
    ap.add_argument("--dir", type=Path, help="keep the journal here (reused when present)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sg-bundle-bench-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    jdir = args.dir or work / "journal"
    if not jdir.exists() or not any(jdir.iterdir()):
        generate(jdir, args.count, days=1)
    key = ed25519.Ed25519PrivateKey.generate()
    text = big_policy(args.rules)
    (raw, bundle), t_sign = timed(B.sign, text, key, version=1, group="bench", max_breaks=2**62)
    verified, t_verify = timed(B.verify, raw, [B.public_of(key)])
    print(f"policy: {args.rules} rules, {len(text):,} bytes; bundle {len(raw):,} bytes")
    print(f"sign (policy check + Ed25519): {t_sign * 1000:.0f} ms; verify (signature + parse + compile): "
          f"{t_verify * 1000:.0f} ms")
    policy_path = work / "policy.toml"
    policy_path.write_text("# allow all\n")
    res, t_apply = timed(A.apply_bundle, raw, trust=[B.public_of(key)], group="bench", fleet_dir=work / "fleet",
                         journal_dir=jdir, policy_path=policy_path, pin_dir=str(work / "pins"))
    assert res.result == "installed", res.to_dict()
    rep, t_gate = timed(A.replay_gate, verified, jdir, None, time.time_ns())
    print(f"apply over {res.decisions:,} decisions of the last 24 h: {t_apply:.2f} s "
          f"({res.decisions / t_apply:,.0f} decisions/s end to end; {res.breaks} would break, "
          f"{res.approximated} approximated)")
    print(f"  of which the replay gate alone: {t_gate:.2f} s ({rep.decisions / t_gate:,.0f} decisions/s)")


if __name__ == "__main__":
    main()
