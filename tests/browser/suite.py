"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium, against the
gateway binary on Postgres and Redis, with the OpenAI SDK calling it as a user's code would.

Run by scripts/browser-suite.sh (part of the README's test command), which provides the
browser, the driver, this script's packages and the binaries. Every step waits for what a
person would see (an element, a text) with a deadline; nothing sleeps and hopes. Screenshots
of the main pages go to docs/screenshots/ (shown in the README), so they stay current.

Environment: BLUESMINDS_BIN, MOCK_BIN, TEST_DATABASE_URL, TEST_REDIS_URL, SCREENSHOTS (a
directory), ARTIFACTS (where a failing step leaves its page and screenshot).
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

import openai
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stack import Proc, database_url, psql  # noqa: E402 (the shared helpers, one level up)

WAIT = 15  # seconds: the longest any step waits for what it expects
PASSWORD = "correct horse battery"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin password 1"



def gone(element):
    """Whether `element`'s document has been replaced. Chromium says so either as a stale
    reference or as "Node with given id does not belong to the document"."""
    try:
        element.is_enabled()
        return False
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise

class Suite:
    def __init__(self):
        self.shots = os.environ["SCREENSHOTS"]
        self.artifacts = os.environ["ARTIFACTS"]
        self.timings = []
        os.makedirs(self.shots, exist_ok=True)
        os.makedirs(self.artifacts, exist_ok=True)

    # --- the stack -------------------------------------------------------------------------

    def start(self):
        self.db_name = "bm_browser_" + uuid.uuid4().hex[:12]
        self.admin_db = database_url(os.environ["TEST_DATABASE_URL"], "postgres")
        psql(self.admin_db, f"CREATE DATABASE {self.db_name}")
        self.mock = Proc([os.environ["MOCK_BIN"], "--addr", "127.0.0.1:0"], dict(os.environ), "listening on")
        secret = uuid.uuid4().hex * 2
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "RUST_LOG": "warn",
            "BLUESMINDS_BIND": "127.0.0.1:0",
            "BLUESMINDS_AUTH__BCRYPT_COST": "4",
            "DATABASE_URL": database_url(os.environ["TEST_DATABASE_URL"], self.db_name),
            "REDIS_URL": os.environ["TEST_REDIS_URL"],
            "BLUESMINDS_REDIS__KEY_PREFIX": "bmbrowser" + uuid.uuid4().hex[:12],
            "JWT_SECRET": secret,
            "API_KEY_SECRET": secret,
            "BLUESMINDS_HEALTH__INTERVAL_SECS": "2",
        }
        self.workdir = tempfile.mkdtemp(prefix="bm-browser-")
        bin_ = os.environ["BLUESMINDS_BIN"]
        subprocess.run([bin_, "migrate"], env=self.env, cwd=self.workdir, check=True, capture_output=True)
        subprocess.run(
            [bin_, "admin", "create", "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD],
            env=self.env, cwd=self.workdir, check=True, capture_output=True,
        )
        # A free port, so that the public URL (the quick start's address) is the real one.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.env["BLUESMINDS_BIND"] = f"127.0.0.1:{port}"
        self.env["BLUESMINDS_PUBLIC_URL"] = self.base
        self.gw = Proc([bin_, "serve"], self.env, "listening on")

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--window-size=1280,900",
            "--user-data-dir=" + tempfile.mkdtemp(prefix="bm-chromium-"),
        ]:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        self.driver.set_page_load_timeout(WAIT)

    def stop(self):
        for name in ["driver"]:
            if hasattr(self, name):
                try:
                    self.driver.quit()
                except Exception:  # noqa: BLE001 (cleaning up after a failure)
                    pass
        for name in ["gw", "mock"]:
            if hasattr(self, name):
                getattr(self, name).stop()
        if hasattr(self, "db_name"):
            psql(self.admin_db, f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")

    # --- helpers ---------------------------------------------------------------------------

    def open(self, path):
        self.driver.get(self.base + path)
        self.record_timing(path)

    def record_timing(self, label):
        ms = self.driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return n ? Math.round(n.responseEnd - n.requestStart) : null;"
        )
        if ms is not None:
            self.timings.append((label, ms))

    def wait_text(self, text, where="main"):
        try:
            WebDriverWait(self.driver, WAIT).until(
                EC.text_to_be_present_in_element((By.CSS_SELECTOR, where), text)
            )
        except TimeoutException:
            raise AssertionError(f"{text!r} never showed in {where} of {self.driver.current_url}")

    def reload_until(self, path, ready, what):
        """Opens `path` until `ready()` holds (statistics read the daily rollup, which trails
        the request log by up to `usage.rollup_interval_ms`), within the deadline."""
        deadline = time.monotonic() + WAIT
        while True:
            self.open(path)
            if ready():
                return
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    def stat(self, label):
        return self.driver.find_element(
            By.XPATH, f"//div[@class='card stat'][div[.='{label}']]/div[@class='value']"
        ).text

    def main_text(self):
        return self.driver.find_element(By.CSS_SELECTOR, "main").text

    def fill(self, field_id, value):
        el = self.driver.find_element(By.ID, field_id)
        el.clear()
        el.send_keys(value)

    def submit(self, button_text, scope="main"):
        buttons = self.driver.find_elements(By.CSS_SELECTOR, f"{scope} button[type=submit]")
        button = next(b for b in buttons if b.text.strip() == button_text)
        page = self.driver.find_element(By.TAG_NAME, "html")
        button.click()
        # The answer has replaced the page before the step reads it: else a text the old page
        # also shows matches at once, or the next navigation races this one.
        WebDriverWait(self.driver, WAIT).until(lambda _: gone(page))

    def accept_confirm(self):
        WebDriverWait(self.driver, WAIT).until(EC.alert_is_present())
        self.driver.switch_to.alert.accept()

    def viewport(self, width, height):
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600,
        })

    def shot(self, name, width=1280):
        """The whole page at `width` CSS pixels (at most 2,400 high), as a PNG in docs."""
        self.viewport(width, 800)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.viewport(width, min(max(height, 600), 2400))
        self.driver.save_screenshot(os.path.join(self.shots, name + ".png"))
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def sign_in(self, email, password):
        self.driver.delete_all_cookies()
        self.open("/login")
        self.fill("email", email)
        self.fill("password", password)
        self.submit("Sign in")
        WebDriverWait(self.driver, WAIT).until(EC.url_contains("/dashboard"))

    def new_key(self):
        return self.driver.find_element(By.ID, "new-key").get_attribute("value")

    # --- the steps -------------------------------------------------------------------------

    def admin_adds_a_server_and_sees_its_health(self):
        self.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD)
        self.open("/admin")
        self.wait_text("No upstream servers")
        self.driver.find_element(By.LINK_TEXT, "Add a server").click()
        self.fill("name", "mock upstream")
        self.fill("base_url", self.mock.url)
        self.fill("supported_models", "gpt-4, gpt-4o")
        self.submit("Add server")
        self.wait_text("mock upstream")
        self.submit("Check every server now")
        self.wait_text("Checked 1 server(s) just now: 0 failed")
        row = self.driver.find_element(By.XPATH, "//tr[contains(., 'mock upstream')]")
        assert "healthy" in row.text, row.text
        assert " ms" in row.text, "the latency shows: " + row.text
        self.open("/admin")
        self.wait_text("Servers: 1 of 1 healthy")
        self.open("/admin/servers")
        self.shot("admin-servers")

    def a_person_signs_up_and_sees_what_to_do_first(self):
        self.driver.delete_all_cookies()
        self.open("/")
        self.shot("landing")
        self.driver.find_element(By.LINK_TEXT, "Create an account").click()
        self.fill("email", "ada@example.com")
        self.fill("password", "short")
        self.submit("Create account")
        self.wait_text("at least 8 characters long")
        assert self.driver.find_element(By.ID, "password").get_attribute("aria-invalid") == "true"
        self.fill("password", PASSWORD)
        self.fill("full_name", "Ada Lovelace")
        self.submit("Create account")
        WebDriverWait(self.driver, WAIT).until(EC.url_contains("/dashboard"))
        self.record_timing("/dashboard (empty)")
        self.wait_text("No requests yet")
        self.wait_text("Create your first API key")
        self.shot("overview-empty")
        self.sign_in("ada@example.com", PASSWORD)

    def the_keyboard_reaches_the_skip_link_first(self):
        self.open("/dashboard")
        self.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        focused = self.driver.switch_to.active_element
        assert focused.text == "Skip to content", focused.text

    def a_key_named_like_a_script_is_only_text(self):
        self.open("/dashboard/keys")
        self.fill("name", "<script>alert(1)</script>")
        self.submit("Create key")
        # Refused as a name, said next to the field, shown back as text, and nothing ran.
        WebDriverWait(self.driver, WAIT).until(EC.presence_of_element_located((By.ID, "name-error")))
        try:
            self.driver.switch_to.alert
            raise AssertionError("a script ran")
        except NoAlertPresentException:
            pass
        assert self.driver.find_element(By.ID, "name").get_attribute("value") == "<script>alert(1)</script>"
        scripts = self.driver.find_elements(By.XPATH, "//script[contains(., 'alert(1)')]")
        assert not scripts, "the name became a script element"

    def create_a_key_call_it_with_the_sdk_and_see_the_request(self):
        self.open("/dashboard/keys")
        self.fill("name", "laptop")
        self.fill("allowed_models", "gpt-4")
        self.submit("Create key")
        self.wait_text("Copy it now: it is shown only this once.")
        key = self.new_key()
        assert key.startswith("bm_"), key
        self.driver.find_element(By.CSS_SELECTOR, "button[data-copy]").click()
        WebDriverWait(self.driver, WAIT).until(
            EC.text_to_be_present_in_element((By.CSS_SELECTOR, "button[data-copy]"), "Copied")
        )
        client = openai.OpenAI(base_url=self.base + "/api/v1", api_key=key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4", max_tokens=5, messages=[{"role": "user", "content": "Hello!"}]
        )
        request_id = raw.headers["x-request-id"]
        answer = raw.parse()
        assert answer.choices[0].message.content, answer
        stream = client.chat.completions.create(
            model="gpt-4", max_tokens=3, stream=True, messages=[{"role": "user", "content": "Hi"}]
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        try:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
            raise AssertionError("a model outside the key's list was served")
        except openai.PermissionDeniedError:
            pass

        # The log lists the request by its id (usage rows are written off the request path:
        # reload until they are there, within the deadline).
        deadline = time.monotonic() + WAIT
        while True:
            self.open("/dashboard/logs")
            if request_id in self.main_text():
                break
            assert time.monotonic() < deadline, "the request never reached the log"
        self.shot("logs")
        Select(self.driver.find_element(By.ID, "status")).select_by_visible_text("Failed")
        self.submit("Filter")
        self.wait_text("403")
        self.reload_until(
            "/dashboard",
            lambda: self.stat("Requests") == "3",
            "the overview never counted the three requests",
        )
        self.wait_text("Tokens a day")
        self.shot("overview")
        self.open("/dashboard/usage?days=7")
        self.wait_text("By model")
        assert "gpt-4" in self.main_text()
        self.shot("usage")
        self.key = key

    def rotate_and_revoke_the_key(self):
        self.open("/dashboard/keys")
        self.shot("keys")
        self.driver.find_element(By.CSS_SELECTOR, "button[aria-label='Rotate laptop']").click()
        self.accept_confirm()
        self.wait_text("New secret for")
        rotated = self.new_key()
        assert rotated != self.key
        old = openai.OpenAI(base_url=self.base + "/v1", api_key=self.key, max_retries=0)
        try:
            old.models.list()
            raise AssertionError("the old secret still works")
        except openai.AuthenticationError:
            pass
        new = openai.OpenAI(base_url=self.base + "/v1", api_key=rotated, max_retries=0)
        assert [m.id for m in new.models.list().data] == ["gpt-4"], "allowed models kept"
        self.open("/dashboard/keys")
        self.driver.find_element(By.CSS_SELECTOR, "button[aria-label='Revoke laptop']").click()
        self.accept_confirm()
        self.wait_text("No keys yet")
        try:
            new.models.list()
            raise AssertionError("a revoked key still works")
        except openai.AuthenticationError:
            pass

    def the_billing_page_shows_the_plan_and_usage(self):
        self.open("/dashboard/billing")
        self.wait_text("Free plan")
        self.wait_text("included tokens used")
        meter = self.driver.find_element(By.ID, "usage-meter")
        assert int(meter.get_attribute("value")) > 0, "the requests' tokens count"
        self.shot("billing")
        self.open("/dashboard/settings")
        self.wait_text("Sign out everywhere")

    def a_user_cannot_open_an_admin_page(self):
        for path in ["/admin", "/admin/servers", "/admin/users"]:
            self.open(path)
            self.wait_text("Page not found")
        assert not self.driver.find_elements(By.LINK_TEXT, "Admin")

    def an_admin_finds_the_user_and_sees_the_platform(self):
        self.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD)
        self.open("/admin/users")
        self.fill("q", "ada")
        self.submit("Search")
        self.wait_text("ada@example.com")
        self.reload_until(
            "/admin",
            lambda: self.stat("Requests today") == "3",
            "the platform page never counted today's three requests",
        )
        self.shot("admin")

    def the_overview_fits_a_phone(self):
        self.sign_in("ada@example.com", PASSWORD)
        self.viewport(390, 844)
        self.open("/dashboard")
        width = self.driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at a phone's width ({width}px)"
        self.shot("overview-phone", width=390)


def main():
    suite = Suite()
    steps = [
        suite.admin_adds_a_server_and_sees_its_health,
        suite.a_person_signs_up_and_sees_what_to_do_first,
        suite.the_keyboard_reaches_the_skip_link_first,
        suite.a_key_named_like_a_script_is_only_text,
        suite.create_a_key_call_it_with_the_sdk_and_see_the_request,
        suite.rotate_and_revoke_the_key,
        suite.the_billing_page_shows_the_plan_and_usage,
        suite.a_user_cannot_open_an_admin_page,
        suite.an_admin_finds_the_user_and_sees_the_platform,
        suite.the_overview_fits_a_phone,
    ]
    failed = 0
    started = time.monotonic()
    try:
        suite.start()
        for step in steps:
            t = time.monotonic()
            try:
                step()
                print(f"ok   {step.__name__} ({time.monotonic() - t:.1f} s)", flush=True)
            except Exception:  # noqa: BLE001 (report every step's failure, then fail)
                failed += 1
                print(f"FAIL {step.__name__}", flush=True)
                traceback.print_exc()
                base = os.path.join(suite.artifacts, step.__name__)
                suite.driver.save_screenshot(base + ".png")
                with open(base + ".html", "w") as f:
                    f.write(suite.driver.page_source)
                print(f"     page and screenshot: {base}.html, .png", flush=True)
                break
    finally:
        suite.stop()
    if suite.timings:
        slowest = sorted(suite.timings, key=lambda t: -t[1])[:5]
        print("slowest page loads (request to response end, ms): "
              + ", ".join(f"{p} {ms}" for p, ms in slowest))
    print(f"{len(steps) - failed if not failed else 'some'} steps passed, {failed} failed, "
          f"{time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
