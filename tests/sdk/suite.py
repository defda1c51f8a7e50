"""The API surface through the vendors' own SDKs, as a team's code calls the gateway.

OpenAI's Python SDK: chat (also through a model route whose target fails, so the request
falls back to another model), legacy completions and the Responses API, plain and streamed.
Anthropic's Python SDK: Messages, plain and streamed, with `x-api-key` as it sends it, and its
exceptions for the gateway's refusals. Each request's usage row is then read back and its
tokens and cost checked against the prices set here. The gateway binary runs on Postgres and
Redis in front of the mock upstream (bins/bluesminds-mock), whose answers are deterministic.

Run by scripts/sdk-suite.sh (part of the README's test command). Every wait has a deadline.
Environment: BLUESMINDS_BIN, MOCK_BIN, TEST_DATABASE_URL, TEST_REDIS_URL.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid

import anthropic
import openai

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stack import Proc, database_url, free_port, psql  # noqa: E402 (the shared helpers, one level up)

WAIT = 15  # seconds: the longest any step waits for what it expects
PASSWORD = "correct horse battery"
ADMIN = ("admin@example.com", "admin password 1")
WORDS = ["Hello", "from", "the", "BluesMinds", "mock", "upstream,", "have", "fun."]
# Micro-dollars per million tokens: Claude Sonnet's shape (input, output, cache read, write).
CLAUDE = ("claude-sonnet-4", 3_000_000, 15_000_000, 300_000, 3_750_000)
MINI = ("gpt-4o-mini", 150_000, 600_000, None, None)


def mock_text(n):
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def cost(price, prompt, cached, written, completion):
    """The stated rule (docs/BILLING.md): the exact sum, rounded once, halves up."""
    _, input_, output, read_price, write_price = price
    uncached = prompt - cached - written
    exact = (uncached * input_ + cached * (read_price or input_) + written * (write_price or input_)
             + completion * output)
    return (exact + 500_000) // 1_000_000


class Suite:
    def start(self):
        self.db_name = "bm_sdk_" + uuid.uuid4().hex[:12]
        self.admin_db = database_url(os.environ["TEST_DATABASE_URL"], "postgres")
        psql(self.admin_db, f"CREATE DATABASE {self.db_name}")
        self.mock = Proc([os.environ["MOCK_BIN"], "--addr", "127.0.0.1:0"], dict(os.environ), "listening on")
        secret = uuid.uuid4().hex * 2
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "RUST_LOG": "warn",
            "BLUESMINDS_BIND": f"127.0.0.1:{port}",
            "BLUESMINDS_AUTH__BCRYPT_COST": "4",
            "DATABASE_URL": database_url(os.environ["TEST_DATABASE_URL"], self.db_name),
            "REDIS_URL": os.environ["TEST_REDIS_URL"],
            "BLUESMINDS_REDIS__KEY_PREFIX": "bmsdk" + uuid.uuid4().hex[:12],
            "JWT_SECRET": secret,
            "API_KEY_SECRET": secret,
            "LITELLM_SERVER_1_URL": self.mock.url,
            "LITELLM_SERVER_1_MODELS": "gpt-4o-mini,claude-sonnet-4",
            # A server that refuses every connection, for a route's target that fails.
            "LITELLM_SERVER_2_URL": f"http://127.0.0.1:{free_port()}",
            "LITELLM_SERVER_2_MODELS": "gpt-4o",
        }
        self.workdir = tempfile.mkdtemp(prefix="bm-sdk-")
        bin_ = os.environ["BLUESMINDS_BIN"]
        subprocess.run([bin_, "migrate"], env=env, cwd=self.workdir, check=True, capture_output=True)
        subprocess.run([bin_, "admin", "create", "--email", ADMIN[0], "--password", ADMIN[1]],
                       env=env, cwd=self.workdir, check=True, capture_output=True)
        self.gw = Proc([bin_, "serve"], env, "listening on")

        self.admin = self.login(*ADMIN)
        for model, input_, output, read, write in [CLAUDE, MINI]:
            self.rest("POST", "/api/admin/model-prices", self.admin, {
                "model": model, "input_micros_per_million": input_, "output_micros_per_million": output,
                "cached_input_micros_per_million": read, "cache_write_input_micros_per_million": write,
            }, expect=201)
        self.rest("POST", "/api/auth/signup", None, {"email": "team@example.com", "password": PASSWORD}, expect=201)
        self.user = self.login("team@example.com", PASSWORD)
        me = self.rest("GET", "/api/auth/me", self.user)
        self.rest("PATCH", f"/api/admin/users/{me['id']}", self.admin, {"tier": "enterprise"})
        self.key = self.rest("POST", "/api/keys", self.user, {"name": "everything"}, expect=201)["key"]
        self.chat_only = self.rest("POST", "/api/keys", self.user,
                                   {"name": "chat only", "scopes": ["chat.completions"]}, expect=201)["key"]
        self.limited = self.rest("POST", "/api/keys", self.user,
                                 {"name": "one a minute", "rate_limit_rpm": 1}, expect=201)["key"]
        self.openai = openai.OpenAI(base_url=self.base + "/api/v1", api_key=self.key, max_retries=0)
        self.anthropic = anthropic.Anthropic(base_url=self.base, api_key=self.key, max_retries=0)
        # The usage rows each step's requests leave: (endpoint, streamed, status). A request
        # refused before its key is known (a wrong key, a missing scope) leaves none.
        self.expected = []

    def stop(self):
        for name in ["gw", "mock"]:
            if hasattr(self, name):
                getattr(self, name).stop()
        if hasattr(self, "db_name"):
            psql(self.admin_db, f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")

    # --- helpers ---------------------------------------------------------------------------

    def rest(self, method, path, cookie, body=None, expect=200):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("content-type", "application/json")
        if cookie:
            req.add_header("cookie", cookie)
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as res:
                status, text, headers = res.status, res.read().decode(), res.headers
        except urllib.error.HTTPError as e:
            status, text, headers = e.code, e.read().decode(), e.headers
        assert status == expect, f"{method} {path}: {status} {text}"
        self.last_headers = headers
        return json.loads(text) if text else None

    def login(self, email, password):
        self.rest("POST", "/api/auth/login", None, {"email": email, "password": password})
        return self.last_headers["set-cookie"].split(";")[0]

    def rows(self, n):
        """The user's usage rows, oldest first, once there are `n` (the writer batches them)."""
        deadline = time.monotonic() + WAIT
        while True:
            data = self.rest("GET", "/api/usage/logs?limit=100", self.user)["data"]
            if len(data) >= n or time.monotonic() > deadline:
                assert len(data) == n, f"{len(data)} usage rows, expected {n}: " + ", ".join(
                    f"{r['endpoint']} {r['model']} {r['status_code']}" for r in reversed(data))
                return list(reversed(data))
            time.sleep(0.05)

    # --- steps -----------------------------------------------------------------------------

    def openai_chat_and_legacy_completions(self):
        chat = self.openai.chat.completions.create(
            model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": "Say hello"}])
        assert chat.choices[0].message.content == mock_text(3), chat
        done = self.openai.completions.create(model="gpt-4o-mini", prompt="Say hello", max_tokens=4)
        assert done.choices[0].text == mock_text(4), done
        assert done.usage.completion_tokens == 4, done.usage
        text = "".join(c.choices[0].text for c in self.openai.completions.create(
            model="gpt-4o-mini", prompt="Say hello", max_tokens=5, stream=True) if c.choices)
        assert text == mock_text(5), text
        self.expected += [("chat.completions", False, 200), ("completions", False, 200),
                          ("completions", True, 200)]

    def openai_chat_through_a_model_route_falls_back(self):
        servers = self.rest("GET", "/api/admin/servers", self.admin)["data"]
        down = next(s["id"] for s in servers if s["supported_models"] == ["gpt-4o"])
        self.rest("POST", "/api/admin/models", self.admin, {
            "name": "smart", "targets": [{"server_id": down, "model": "gpt-4o"}],
            "fallbacks": ["gpt-4o-mini"]}, expect=201)
        models = [m.id for m in self.openai.models.list()]
        assert "smart" in models, models
        chat = self.openai.chat.completions.create(
            model="smart", max_tokens=2, messages=[{"role": "user", "content": "Say hello"}])
        assert chat.model == "gpt-4o-mini", chat  # what served it
        assert chat.choices[0].message.content == mock_text(2), chat
        text = "".join(c.choices[0].delta.content or "" for c in self.openai.chat.completions.create(
            model="smart", max_tokens=3, stream=True, messages=[{"role": "user", "content": "Say hello"}])
            if c.choices)
        assert text == mock_text(3), text
        self.expected += [("chat.completions", False, 200), ("chat.completions", True, 200)]

    def openai_responses_plain_and_streamed(self):
        r = self.openai.responses.create(model="gpt-4o-mini", input="Say hello",
                                         instructions="Be brief", max_output_tokens=5)
        assert r.output_text == mock_text(5), r
        assert r.usage.output_tokens == 5, r.usage
        deltas, completed = [], None
        for event in self.openai.responses.create(model="gpt-4o-mini", input="Say hello",
                                                  max_output_tokens=6, stream=True):
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
        assert "".join(deltas) == mock_text(6), deltas
        assert completed is not None and completed.usage.output_tokens == 6, completed
        # The SDK's own stream helper, which assembles the response from the events.
        with self.openai.responses.stream(model="gpt-4o-mini", input="Say hello",
                                          max_output_tokens=2) as stream:
            final = stream.get_final_response()
        assert final.output_text == mock_text(2), final
        self.expected += [("responses", False, 200), ("responses", True, 200), ("responses", True, 200)]

    def openai_refusals_have_the_sdks_exceptions(self):
        narrow = openai.OpenAI(base_url=self.base + "/v1", api_key=self.chat_only, max_retries=0)
        for call in [
            lambda: narrow.responses.create(model="gpt-4o-mini", input="hi"),
            lambda: narrow.completions.create(model="gpt-4o-mini", prompt="hi"),
        ]:
            try:
                call()
                raise AssertionError("a key without the scope was served")
            except openai.PermissionDeniedError as e:
                assert "scope" in e.message, e.message
        try:
            self.openai.responses.create(model="gpt-4o-mini", input="hi",
                                         extra_body={"api_base": "http://attacker.example"})
            raise AssertionError("a field steering the upstream was forwarded")
        except openai.BadRequestError as e:
            assert "not allowed" in e.message, e.message
        self.expected += [("responses", False, 400)]

    def anthropic_messages_plain_and_streamed(self):
        m = self.anthropic.messages.create(
            model="claude-sonnet-4", max_tokens=6, system="Be brief",
            messages=[{"role": "user", "content": "Say hello, at some length please"}],
            extra_body={"mock": {"cache_read": 3, "cache_write": 2}})
        assert m.content[0].text == mock_text(6), m
        assert (m.usage.output_tokens, m.usage.cache_read_input_tokens,
                m.usage.cache_creation_input_tokens) == (6, 3, 2), m.usage
        self.claude_input = m.usage.input_tokens
        models = [m.id for m in self.anthropic.models.list()]
        assert "claude-sonnet-4" in models and "smart" in models, models
        # The SDK's stream helper: text as it comes, then the assembled message.
        api = anthropic.Anthropic(base_url=self.base + "/api", api_key=self.key, max_retries=0)
        with api.messages.stream(model="claude-sonnet-4", max_tokens=7,
                                 system="Be brief",
                                 messages=[{"role": "user", "content": "Say hello, at some length please"}],
                                 extra_body={"mock": {"cache_read": 3, "cache_write": 2}}) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == mock_text(7), text
        assert (final.usage.input_tokens, final.usage.output_tokens) == (self.claude_input, 7), final.usage
        self.expected += [("messages", False, 200), ("messages", True, 200)]

    def anthropic_refusals_have_the_sdks_exceptions(self):
        def raises(kind, call):
            try:
                call()
            except kind as e:
                assert e.body["type"] == "error", e.body
                return e
            raise AssertionError(f"expected {kind.__name__}")

        hello = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        wrong = anthropic.Anthropic(base_url=self.base, api_key="bm_wrong_key", max_retries=0)
        raises(anthropic.AuthenticationError, lambda: wrong.messages.create(model="claude-sonnet-4", **hello))
        narrow = anthropic.Anthropic(base_url=self.base, api_key=self.chat_only, max_retries=0)
        e = raises(anthropic.PermissionDeniedError, lambda: narrow.messages.create(model="claude-sonnet-4", **hello))
        assert "'messages' scope" in e.message, e.message
        e = raises(anthropic.NotFoundError, lambda: self.anthropic.messages.create(model="claude-nope", **hello))
        assert e.body["error"]["type"] == "not_found_error", e.body
        e = raises(anthropic.BadRequestError, lambda: self.anthropic.messages.create(
            model="claude-sonnet-4", extra_body={"metadata": {"api_key": "sk-x"}}, **hello))
        assert "not allowed" in e.message, e.message
        limited = anthropic.Anthropic(base_url=self.base, api_key=self.limited, max_retries=0)
        limited.messages.create(model="claude-sonnet-4", **hello)
        e = raises(anthropic.RateLimitError, lambda: limited.messages.create(model="claude-sonnet-4", **hello))
        assert e.body["error"]["type"] == "rate_limit_error", e.body
        self.expected += [("messages", False, s) for s in (404, 400, 200, 429)]

    def every_request_has_its_usage_row_and_cost(self):
        rows = self.rows(len(self.expected))
        got = [(r["endpoint"], r["streamed"], r["status_code"]) for r in rows]
        assert got == self.expected, got
        # The route's requests are recorded as the model that served them.
        assert [r["model"] for r in rows[3:5]] == ["gpt-4o-mini", "gpt-4o-mini"], rows[3:5]
        for r in rows:
            if r["status_code"] != 200:
                assert r["cost_micros"] == 0 and r["total_tokens"] == 0, r
                continue
            assert not r["usage_estimated"], r
            price = CLAUDE if r["model"] == "claude-sonnet-4" else MINI
            cache_used = r["endpoint"] == "messages" and r["completion_tokens"] in (6, 7)
            cached, written = (3, 2) if cache_used else (0, 0)
            want = cost(price, r["prompt_tokens"], cached, written, r["completion_tokens"])
            assert r["cost_micros"] == want, (r, want)
        claude = [r for r in rows if r["endpoint"] == "messages" and r["completion_tokens"] in (6, 7)]
        for r in claude:
            # Anthropic's input_tokens excludes cache reads and writes; the row counts them all.
            assert r["prompt_tokens"] == self.claude_input + 3 + 2, r
        print("     rows: " + ", ".join(f"{r['endpoint']}{' (stream)' if r['streamed'] else ''} "
                                        f"{r['status_code']} {r['prompt_tokens']}+{r['completion_tokens']} "
                                        f"tokens {r['cost_micros']} µ$" for r in rows), flush=True)


def main():
    suite = Suite()
    steps = [
        suite.openai_chat_and_legacy_completions,
        suite.openai_chat_through_a_model_route_falls_back,
        suite.openai_responses_plain_and_streamed,
        suite.openai_refusals_have_the_sdks_exceptions,
        suite.anthropic_messages_plain_and_streamed,
        suite.anthropic_refusals_have_the_sdks_exceptions,
        suite.every_request_has_its_usage_row_and_cost,
    ]
    failed = 0
    started = time.monotonic()
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}", flush=True)
    try:
        suite.start()
        for step in steps:
            t = time.monotonic()
            try:
                step()
                print(f"ok   {step.__name__} ({time.monotonic() - t:.1f} s)", flush=True)
            except Exception:  # noqa: BLE001 (report the failure, then stop: later steps build on it)
                failed += 1
                print(f"FAIL {step.__name__}", flush=True)
                traceback.print_exc()
                break
    finally:
        suite.stop()
    print(f"{len(steps) - failed if not failed else 'some'} steps passed, {failed} failed, "
          f"{time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
