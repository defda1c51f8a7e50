#!/usr/bin/env python3
"""`just bench` helper: mints N API keys for the bench admin over one keep-alive connection.

  bench-keys.py HOST:PORT EMAIL PASSWORD N OUT_FILE

Each key gets the bench key's high limits; they are written one per line to OUT_FILE (a file
under target/, deleted with the bench database's keys: never committed).
"""

import http.client
import json
import sys
import time


def main():
    addr, email, password, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    conn = http.client.HTTPConnection(addr, timeout=30)
    conn.request("POST", "/api/auth/login", json.dumps({"email": email, "password": password}),
                 {"content-type": "application/json"})
    res = conn.getresponse()
    res.read()
    cookie = res.getheader("set-cookie").split(";")[0]
    body = json.dumps({
        "name": "bench-many",
        "rate_limit_rpm": 1_000_000_000,
        "rate_limit_tpm": 1_000_000_000_000,
        "quota_daily": 1_000_000_000_000,
        "quota_monthly": 1_000_000_000_000,
    })
    started = time.monotonic()
    with open(out, "w") as f:
        for i in range(n):
            conn.request("POST", "/api/keys", body, {"content-type": "application/json", "cookie": cookie})
            res = conn.getresponse()
            data = res.read()
            if res.status != 201:
                sys.exit(f"key {i}: HTTP {res.status}: {data[:200]!r}")
            f.write(json.loads(data)["key"] + "\n")
            if (i + 1) % 2000 == 0:
                print(f"  {i + 1} keys ({time.monotonic() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
