"""What a Docker-tier run that does not exit 0 on its own adds: the post-mortem
(``DockerTier._killed_reason``: an inspect, the events query, the pids check), timed around the
real call inside real runs, beside whole runs exiting 0 and 1 interleaved (`--tier gvisor` too).

    SYMBI_SANDBOX_NO_SETUP=1 PYTHONPATH=$PWD .venv/bin/python bench/docker_postmortem.py --runs 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # bench/http.py is not the stdlib's http

from gateway.config.model import Config
from gateway.sandbox import SandboxManager, SandboxRequest, docker_tier
from gateway.sandbox.types import KilledReason


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "n": len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tier", default="docker", choices=("docker", "gvisor"))
    args = parser.parse_args()
    post: dict[str, list[float]] = {"exit 0": [], "exit 1": []}
    real = docker_tier.DockerTier._killed_reason

    def timed(self: docker_tier.DockerTier, stop: docker_tier._Stopper, code: int) -> KilledReason:
        start = time.perf_counter()
        try:
            return real(self, stop, code)
        finally:
            post["exit 0" if code == 0 else "exit 1"].append(time.perf_counter() - start)

    docker_tier.DockerTier._killed_reason = timed  # type: ignore[method-assign]
    manager = SandboxManager(Config())
    whole: dict[str, list[float]] = {"exit 0": [], "exit 1": []}
    try:
        for _ in range(args.runs):
            for name, command, want in (("exit 0", "/bin/true", 0), ("exit 1", "/bin/false", 1)):
                start = time.perf_counter()
                got = manager.run(args.tier, SandboxRequest(command=(command,)))
                whole[name].append(time.perf_counter() - start)
                if (got.exit_code, got.killed) != (want, "none"):
                    raise SystemExit(f"{name}: {got}")
    finally:
        manager.close()
    print(
        json.dumps(
            {
                "tier": args.tier,
                "post_mortem": {k: _ms(v) for k, v in post.items()},
                "whole_run": {k: _ms(v) for k, v in whole.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
