"""The IDE of the stack, for real: code-server at the version docker/compose.yaml pins, set up
by docker/code-server/start.sh's own `setup_ide` (the stack's Continue config and secrets
file in a home directory, an extension installed from a local VSIX), started with start.sh's
flags on a loopback port. It must answer its health check, serve its login page, let the
password in and serve the workbench, which headless Chromium renders (the screenshot is
kept in the test's tmp_path).

code-server comes from npm (scripts/install-ide.sh, into .ide/). The image and the npm
package are one release: coder/code-server's .github/workflows/publish.yaml (at v4.104.0)
publishes, on each GitHub release, the npm package (job `npm`: `npm run publish:npm`, i.e.
ci/steps/publish-npm.sh, which publishes "$VERSION" under the `latest` tag) and the image
(job `docker`: ci/steps/docker-buildx-push.sh, tagged `codercom/code-server:${VERSION}` by
ci/release-image/docker-bake.hcl), VERSION being the tag without its `v` in both jobs.

The Continue extension itself is not on any registry this project can reach, so a stand-in
VSIX checks start.sh's install path; docker/README.md says how an operator checks Continue.
"""

from __future__ import annotations

import base64
import contextlib
import html
import http.client
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
START = DOCKER / "code-server" / "start.sh"
IDE_BIN = REPO / ".ide" / "node_modules" / ".bin"  # node 22 and code-server (install-ide.sh)
CODE_SERVER = IDE_BIN / "code-server"
INSTALL_HINT = "run `bash scripts/install-ide.sh`"
PASSWORD = "smoke-test-password-4d1f"
# The stand-in extension: a view container in the activity bar, as Continue's is (Continue's
# extensions/vscode/package.json: contributes.viewsContainers.activitybar id `continue`).
# Declarative only (no `main`), so it also runs in Restricted Mode, which the workbench is in
# until the developer trusts the folder ("Does my extension have a main entry point?" in
# https://code.visualstudio.com/api/extension-guides/workspace-trust).
STUB_ID = "coderag-test.ide-smoke"
STUB_TITLE = "coderag smoke"
STUB_TEXT = "Installed from a local VSIX by start.sh"


def pinned_version() -> str:
    """The code-server version of the compose file's image tag."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    image = compose["services"]["code-server"]["image"]
    name, _, tag = image.rpartition(":")
    assert name == "codercom/code-server" and re.fullmatch(r"\d+\.\d+\.\d+", tag), image
    return tag


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = chromium_binary()
    if exe is None:
        pytest.skip(f"no chromium on PATH ({INSTALL_HINT})")
    return exe


@pytest.fixture(scope="module")
def code_server() -> Path:
    if not os.access(CODE_SERVER, os.X_OK):
        pytest.skip(f"code-server is not installed in .ide/ ({INSTALL_HINT})")
    return CODE_SERVER


def ide_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: the installed node 22 and code-server first on PATH, and HOME
    the test's, so nothing is read from or written to the real home directory."""
    return {
        "PATH": f"{IDE_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        **extra,
    }


def write_stub_vsix(path: Path) -> None:
    """A minimal VSIX (what `vsce package` writes: the manifest and extension/)."""
    publisher, name = STUB_ID.split(".")
    manifest = {
        "name": name,
        "publisher": publisher,
        "version": "0.0.1",
        "displayName": STUB_TITLE,
        "engines": {"vscode": "^1.80.0"},
        "contributes": {
            "viewsContainers": {
                "activitybar": [{"id": "coderag-smoke", "title": STUB_TITLE, "icon": "icon.svg"}]
            },
            "views": {"coderag-smoke": [{"id": "coderagSmoke.view", "name": STUB_TITLE}]},
            "viewsWelcome": [{"view": "coderagSmoke.view", "contents": STUB_TEXT}],
        },
    }
    vsixmanifest = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<PackageManifest Version="2.0.0" '
        'xmlns="http://schemas.microsoft.com/developer/vsx-schema/2011">'
        f'<Metadata><Identity Language="en-US" Id="{name}" Version="0.0.1" '
        f'Publisher="{publisher}"/><DisplayName>{STUB_TITLE}</DisplayName></Metadata>'
        '<Installation><InstallationTarget Id="Microsoft.VisualStudio.Code"/></Installation>'
        '<Assets><Asset Type="Microsoft.VisualStudio.Code.Manifest" '
        'Path="extension/package.json" Addressable="true"/></Assets></PackageManifest>'
    )
    icon = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
        '<circle cx="12" cy="12" r="9" fill="currentColor"/></svg>'
    )
    with zipfile.ZipFile(path, "w") as vsix:
        vsix.writestr("extension.vsixmanifest", vsixmanifest)
        vsix.writestr("extension/package.json", json.dumps(manifest))
        vsix.writestr("extension/icon.svg", icon)


def start_sh(home: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `script` (bash) with start.sh sourced: its functions and settings, not its main."""
    return subprocess.run(
        # $0 is not start.sh, so that its "executed, not sourced" test tells them apart
        ["bash", "-c", f'source "{START}" && {script}', "bash", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=ide_env(home),
    )


@dataclass(frozen=True)
class Ide:
    url: str
    home: Path
    workspace: Path
    log: Path

    def log_tail(self, all_of_it: bool = False) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return text if all_of_it else text[-3000:]


@pytest.fixture(scope="module")
def ide(code_server: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ide]:
    """start.sh's setup in a fresh home, then code-server with start.sh's flags on
    127.0.0.1 (port 0: code-server prints the one it got). The home stays short: code-server
    puts a unix socket under it (108 bytes at most)."""
    home = tmp_path_factory.mktemp("ide")
    workspace = home / "project"  # the container opens /home/coder/project
    workspace.mkdir()
    vsix = home / "continue.vsix"
    write_stub_vsix(vsix)
    setup = start_sh(
        home, 'setup_ide "$1" "$2"', str(vsix), str(DOCKER / "continue" / "config.yaml")
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr

    flags = start_sh(home, 'printf "%s\\n" "${CODE_SERVER_FLAGS[@]}"')
    assert flags.returncode == 0, flags.stderr
    log = home / "code-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(code_server),
                "--bind-addr",
                "127.0.0.1:0",
                *flags.stdout.split(),
                str(workspace),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ide_env(home, PASSWORD=PASSWORD),
            start_new_session=True,  # its extension host and helpers: one group to stop
        )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(encoding="utf-8", errors="replace")
            found = re.search(r"HTTP server listening on (http://127\.0\.0\.1:\d+)/", text)
            url = found.group(1) if found else None
            time.sleep(0.2)
        assert url, "code-server did not start:\n" + log.read_text(errors="replace")[-3000:]
        yield Ide(url=url, home=home, workspace=workspace, log=log)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group the fixture started, SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.wait(10)


def request(
    ide: Ide, method: str, path: str, body: dict[str, str] | None = None, cookie: str = ""
) -> tuple[int, dict[str, str], str]:
    """One HTTP request, redirects not followed: (status, lower-cased headers, body)."""
    parts = urllib.parse.urlsplit(ide.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Cookie": cookie} if cookie else {}
    data = None
    if body is not None:
        data = urllib.parse.urlencode(body)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


# --- what start.sh put in place ------------------------------------------------------------------


def test_setup_puts_the_stack_continue_config_in_place(ide: Ide) -> None:
    continue_dir = ide.home / ".continue"
    config_file = continue_dir / "config.yaml"
    source = DOCKER / "continue" / "config.yaml"
    assert config_file.read_bytes() == source.read_bytes()
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    http_providers = [c for c in config["context"] if c["provider"] == "http"]
    assert [p["params"]["title"] for p in http_providers] == ["coderag"]
    assert http_providers[0]["params"]["url"] == "http://coderag-api:8080/v1/continue/context"
    assert http_providers[0]["params"]["headers"] == {
        "Authorization": "Bearer ${{ secrets.CODERAG_TOKEN }}"
    }
    [mcp] = config["mcpServers"]
    assert (mcp["name"], mcp["type"], mcp["url"]) == (
        "coderag",
        "streamable-http",
        "http://coderag-api:8080/mcp",
    )
    # the chat model sends the developer's own token to the gateway, as the others do
    [model] = config["models"]
    assert (model["apiBase"], model["apiKey"]) == (
        "http://litellm:4000/v1",
        "${{ secrets.CODERAG_TOKEN }}",
    )
    # the secrets file Continue resolves ${{ secrets.* }} from, owner-only: empty until the
    # developer runs coderag-login.sh (no shared key in the IDE)
    env_file = continue_dir / ".env"
    assert env_file.read_text(encoding="utf-8") == ""
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_a_recreated_container_keeps_the_token_and_drops_an_older_stacks_keys(
    tmp_path: Path,
) -> None:
    """The home directory is a volume: start.sh rewrites ~/.continue/.env on every start,
    keeping the developer's token and dropping what an older stack wrote there (its gateway
    key, which was the LiteLLM master key, and a coderag service token)."""
    env_file = tmp_path / ".continue" / ".env"
    env_file.parent.mkdir()
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"
    env_file.write_text(
        f"LITELLM_API_KEY=sk-old-master-key\nCODERAG_API_TOKEN=old-service\nCODERAG_TOKEN={token}\n",
        encoding="utf-8",
    )
    result = start_sh(tmp_path, 'write_continue_env "$HOME/.continue/.env"')
    assert result.returncode == 0, result.stderr
    assert env_file.read_text(encoding="utf-8") == f"CODERAG_TOKEN={token}\n"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert list(env_file.parent.iterdir()) == [env_file], "no temporary file left"


def test_setup_installed_the_extension_from_the_vsix(ide: Ide, code_server: Path) -> None:
    """What an operator runs in the container to see that Continue is installed."""
    listed = subprocess.run(
        [str(code_server), "--list-extensions", "--show-versions"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ide_env(ide.home),
    )
    assert listed.returncode == 0, listed.stderr
    assert f"{STUB_ID}@0.0.1" in listed.stdout.split()


def test_setup_refuses_to_start_without_the_vsix(tmp_path: Path) -> None:
    result = start_sh(
        tmp_path, 'setup_ide "$1" "$2"', str(tmp_path / "none.vsix"), str(DOCKER / "continue")
    )
    assert result.returncode == 1
    assert "none.vsix is missing (set CONTINUE_VSIX in docker/.env)" in result.stderr
    assert not (tmp_path / ".continue").exists()


# --- the server ----------------------------------------------------------------------------------


def test_installed_code_server_is_the_pinned_version(ide: Ide, code_server: Path) -> None:
    result = subprocess.run(
        [str(code_server), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ide_env(ide.home),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split()[0] == pinned_version()
    assert f"code-server {pinned_version()}" in ide.log_tail(all_of_it=True)


def test_health_check_answers_without_a_login(ide: Ide) -> None:
    # the compose health check: `curl -fsS http://127.0.0.1:8443/healthz`
    status, headers, body = request(ide, "GET", "/healthz")
    assert status == 200, ide.log_tail()
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["status"] in {"alive", "expired"}


def test_login_page_then_the_workbench(ide: Ide) -> None:
    status, headers, _ = request(ide, "GET", "/")
    assert (status, headers["location"]) == (302, "./login")
    status, _, page = request(ide, "GET", "/login")
    assert status == 200
    assert "<title>code-server login</title>" in page
    assert 'type="password"' in page and 'method="post"' in page

    status, headers, page = request(ide, "POST", "/login", {"password": "wrong"})
    assert status == 200 and "set-cookie" not in headers
    assert "Incorrect password" in page

    status, headers, _ = request(ide, "POST", "/login", {"password": PASSWORD})
    assert status == 302, ide.log_tail()
    session = headers["set-cookie"].split(";", 1)[0]
    assert session.startswith("code-server-session=") and len(session) > 40

    status, headers, _ = request(ide, "GET", "/", cookie=session)
    assert status == 302
    target = urllib.parse.urlsplit(headers["location"])
    assert urllib.parse.parse_qs(target.query)["folder"] == [str(ide.workspace)]
    status, _, page = request(ide, "GET", f"/?{target.query}", cookie=session)
    assert status == 200
    # the workbench page carries its configuration as JSON in a meta tag
    found = re.search(r'id="vscode-workbench-web-configuration" data-settings="([^"]+)"', page)
    assert found, page[:2000]
    settings = json.loads(html.unescape(found.group(1)))
    assert settings["productConfiguration"]["codeServerVersion"] == pinned_version()
    # its state lives in the home start.sh set up (in the container: the home volume)
    assert settings["userDataPath"] == str(ide.home / ".local" / "share" / "code-server")
    # Restricted Mode until the folder is trusted: Continue waits for that (docker/README.md)
    assert settings["enableWorkspaceTrust"] is True


# --- in a browser --------------------------------------------------------------------------------


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe: the DevTools protocol as
    NUL-terminated JSON messages, read by Chromium on fd 3 and written on fd 4
    (chromium's switches: `remote-debugging-pipe`), so no websocket client is needed."""

    def __init__(self, exe: str, profile: Path, window: tuple[int, int]) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            "--headless",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile / 'chromium'}",
            f"--window-size={window[0]},{window[1]}",
            "about:blank",
        ]
        # bash puts the pipe ends on fds 3 and 4 (subprocess cannot choose fd numbers)
        redirect = (
            f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} '
            f"{to_browser_r}<&- {from_browser_w}>&-"
        )
        self._log_path = profile / "chromium.log"
        self._log = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            ["bash", "-c", redirect, exe, *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(profile), "LANG": "C.UTF-8"},
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """One command (on the page's session once attached); its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
                if not ready:
                    raise TimeoutError(f"{method}: no answer in {timeout} s")
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"{method}: chromium exited, see {self._log_path}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:  # anything else is an event
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"{what}: not there after {timeout} s")

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", timeout=10)
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._log.close()


def png_facts(data: bytes) -> tuple[tuple[int, int], int, float]:
    """(size, distinct colours, share of the commonest colour) of a PNG."""
    from PIL import Image  # Pillow comes with matplotlib, a coderag dependency

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = image.convert("RGB")
    colours = rgb.getcolors(maxcolors=rgb.width * rgb.height) or []
    commonest = max(count for count, _ in colours)
    return rgb.size, len(colours), commonest / (rgb.width * rgb.height)


def test_workbench_renders_in_headless_chromium(ide: Ide, chromium: str, tmp_path: Path) -> None:
    """Chromium logs in through the login form, the workbench comes up with the folder
    open and the VSIX's activity bar entry; its view is opened and the page screenshotted."""
    browser = Browser(chromium, tmp_path, window=(1280, 800))
    try:
        browser.open_page()
        browser.send("Page.enable")
        browser.send("Page.navigate", {"url": f"{ide.url}/login"})
        browser.wait_for("!!document.querySelector('input[type=password]')", 30, "login form")
        browser.evaluate(
            f"document.querySelector('input[type=password]').value = {json.dumps(PASSWORD)};"
            "document.querySelector('form.login-form').submit(); true"
        )
        browser.wait_for(
            "!!document.querySelector('.monaco-workbench .part.activitybar')"
            " && !!document.querySelector('.monaco-workbench .part.editor')",
            60,
            f"workbench\n{ide.log_tail()}",
        )
        # The title is set once the folder is open, after the parts render: wait for it too.
        title = f"{ide.workspace.name} - code-server"
        browser.wait_for(
            f"document.title === {json.dumps(title)}", 30, f"title {title!r}, not the default"
        )
        entry = f".activitybar .action-item [aria-label^={json.dumps(STUB_TITLE)}]"
        browser.wait_for(f"!!document.querySelector('{entry}')", 60, "the VSIX's view container")
        browser.evaluate(f"document.querySelector('{entry}').click(); true")
        browser.wait_for(
            f"document.body.innerText.includes({json.dumps(STUB_TEXT)})", 30, "its view"
        )
        time.sleep(1)  # let the view paint
        shot = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"])
    finally:
        browser.close()

    path = tmp_path / "code-server-workbench.png"
    path.write_bytes(shot)
    (width, height), colours, commonest = png_facts(shot)
    assert width == 1280 and height >= 600, (width, height)
    # a rendered workbench: text, icons and panels, not one flat colour
    assert colours > 64, f"{path}: {colours} colours"
    assert commonest < 0.9, f"{path}: {commonest:.0%} of the pixels are one colour"
