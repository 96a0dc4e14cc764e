"""The image's HEALTHCHECK: GET /healthz on the address the gateway listens on.

It reads that address the way ``symbi serve`` does (the config at ``$SYMBI_CONFIG_PATH`` plus
the env overrides, e.g. ``SYMBI_HTTP_HOST``), so the check follows the config instead of
assuming a port. Exit 0 when the answer is 200, else 1 (Docker's healthy/unhealthy).
"""

from __future__ import annotations

import os
import sys
import urllib.request

from gateway.config.load import load_config

# a wildcard bind is reached on loopback; the Host header is one the gateway always allows
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def main() -> int:
    http = load_config(None, os.environ).http
    host = _WILDCARD.get(http.host, http.host)
    netloc = f"[{host}]" if ":" in host else host
    req = urllib.request.Request(f"http://{netloc}:{http.port}/healthz", headers={"Host": "127.0.0.1"})
    try:
        with urllib.request.urlopen(req, timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as e:  # refused, timed out, or an HTTP error status (503: the gateway stopped)
        print(f"healthz: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
