"""What the Python suites (tests/browser, tests/sdk) share: child processes that announce their
address, and the test database's URLs. Imported by each suite from its parent directory."""

import socket
import subprocess
import tempfile
import threading
import time
from urllib.parse import urlsplit, urlunsplit


class Proc:
    """A child process whose first stdout line naming an http:// address is its address."""

    def __init__(self, args, env, marker):
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.monotonic() + 60
        self.url = None
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            if marker in line:
                self.url = next(w for w in line.split() if w.startswith("http://"))
                break
        if self.url is None:
            self.stop()
            self.log.seek(0)
            raise RuntimeError(f"{args[0]} did not start: {self.log.read().decode()[-2000:]}")
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.p.stdout], daemon=True).start()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()


def psql(url, sql):
    subprocess.run(["psql", url, "-qAtc", sql], check=True, capture_output=True)


def database_url(base, name):
    """`base` (a Postgres URL) naming the database `name` instead."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
