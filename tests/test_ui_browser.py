"""The Dagster UI in a real browser (issue 6): catalog, Materialize all, the run, trained_model's metrics.

Starts ``dagster dev`` for this code location on a free 127.0.0.1 port with a temporary
MLOPS_HOME/DAGSTER_HOME, drives Debian's chromium with playwright (its own browser download does
not work offline) and stops everything it started at the end, including the local SageMaker
workers and endpoint servers the run left behind.

Needs /usr/bin/chromium (``sudo apt-get install chromium`` or ``scripts/ensure_chromium.sh``,
which ``make test`` runs); without it the test is skipped, saying so. ``MLOPS_CHROMIUM`` points
at another chromium binary. Screenshots go to ``$MLOPS_UI_SCREENSHOTS`` if set, else to the
test's tmp_path; the folder is printed. Select the test with ``pytest -m browser`` (or leave it
out with ``-m 'not browser'``).
"""

from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("MLOPS_CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = "install it with `sudo apt-get install chromium` or `scripts/ensure_chromium.sh` (make test runs it)"
# Headless, and nothing that phones home: no background networking, component updates, sync,
# QUIC, proxy or name resolution (only 127.0.0.1, the webserver, is reachable by name or IP).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
METRICS = ("mse", "rmse", "mae", "r2")
GATED = {"staging_endpoint", "prod_endpoint"}  # approval gate, then staging gate: skipped, not failed
SERVER_DEADLINE = 180.0  # dagster dev on two slow cores: imports, code server, webserver
RUN_DEADLINE = 8 * 60.0  # Materialize all takes 1-3 minutes here
UI_TIMEOUT_MS = 60_000  # one page element (the code location may still be loading)

pytestmark = pytest.mark.browser


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dagster_cli() -> str:
    for candidate in (REPO / ".venv" / "bin" / "dagster", Path(sys.executable).parent / "dagster"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"no dagster executable in {REPO / '.venv' / 'bin'} or beside {sys.executable}: run `make install`")


def _child_setup() -> None:
    """In the child before exec: its own process group, and SIGINT/SIGTERM at their defaults.

    ``dagster dev`` maps SIGTERM to whatever SIGINT does; a pytest started in the background
    (nohup, CI) hands SIGINT down as ignored, and then SIGTERM would be ignored too."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def processes_referencing(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line, environment or working directory
    mentions marker (SageMaker jobs run with a constructed environment, in a directory under it)."""
    found, me = [], os.getpid()
    for proc in psutil.process_iter(["status"]):
        if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            cmdline = " ".join(proc.cmdline())
            hit = (
                marker in cmdline
                or any(marker in value for value in proc.environ().values())
                or marker in proc.cwd()
            )
        except (psutil.Error, OSError):
            continue
        if hit:
            found.append((proc.pid, cmdline[:200]))
    return found


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read {path}: {err})"


class DagsterDev:
    """``dagster dev -w workspace.yaml`` on 127.0.0.1 with its own MLOPS_HOME and DAGSTER_HOME."""

    def __init__(self, root: Path) -> None:
        self.home = root / "mlops-home"
        self.dagster_home = self.home / "dagster"
        self.dagster_home.mkdir(parents=True)
        shutil.copy(REPO / "config" / "dagster.yaml", self.dagster_home / "dagster.yaml")
        self.log_path = root / "dagster-dev.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The user's MLOPS_* settings (an aws backend, say) must not leak into the test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_") and k != "DAGSTER_HOME"}
        env.update(
            MLOPS_HOME=str(self.home),
            MLOPS_BACKEND="local",
            DAGSTER_HOME=str(self.dagster_home),
            SAGEMAKER_SUPPRESS_V2_WARNING="1",
            AWS_EC2_METADATA_DISABLED="true",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.stopped = False

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [_dagster_cli(), "dev", "-h", "127.0.0.1", "-p", str(self.port), "-w", "workspace.yaml"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_setup,
            )
        atexit.register(self._kill_all)  # a Ctrl-C that skips fixture teardown still cleans up

    def wait_until_up(self, deadline_s: float = SERVER_DEADLINE) -> float:
        """Seconds until /server_info answered; fails with the log if dagster dev exits or never answers."""
        assert self.proc is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1
        start = time.monotonic()
        while time.monotonic() - start < deadline_s:
            if self.proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                with opener.open(f"{self.url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        pytest.fail(f"dagster dev did not answer on {self.url} within {deadline_s:.0f} s:\n{_tail(self.log_path)}")

    def stop(self) -> list[tuple[int, str]]:
        """Stop dagster dev (SIGTERM to its group, SIGKILL after 30 s), then the endpoints its runs
        started (the stop_endpoints job), then anything else still mentioning MLOPS_HOME (workers,
        job processes of an interrupted run). Returns what had to be killed in that last step."""
        if self.proc is not None and not self.stopped:
            self.stopped = True
            pgid = self.proc.pid
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            end = time.monotonic() + 30
            while time.monotonic() < end and _group_alive(pgid):
                time.sleep(0.5)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self._stop_endpoints()
        # Detached processes (own sessions) may take a moment to notice their endpoint is gone.
        end = time.monotonic() + 15
        while (left := processes_referencing(str(self.home))) and time.monotonic() < end:
            time.sleep(0.5)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def _stop_endpoints(self) -> None:
        """The stop_endpoints job (what `make endpoint-stop` runs), in this process on dagster dev's
        MLOPS_HOME: the CLI would only add seconds of imports."""
        from dagster import DagsterInstance
        from helpers import run_job

        from mlops_dagster import build_definitions
        from mlops_dagster.settings import Settings

        with DagsterInstance.ephemeral() as instance:
            result = run_job(build_definitions(Settings.from_env(self.env)), instance, "stop_endpoints")
            if not result.success:
                print(f"stop_endpoints failed:\n{run_failure_report(instance, result.run_id)}")

    def _kill_all(self) -> None:
        if self.proc is not None and not self.stopped:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pid, _ in processes_referencing(str(self.home)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def instance(self):
        """The dagster dev instance, read from this process (run ids, events, errors)."""
        from dagster import DagsterInstance

        return DagsterInstance.from_config(str(self.dagster_home))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def browser():
    """Debian's chromium through playwright; skipped (with how to install it) when it cannot run."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: {INSTALL_HINT}")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing: `make install` installs the dev extra")
    playwright = sync_playwright().start()
    try:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=120_000)
        except PlaywrightError as err:
            pytest.skip(f"playwright cannot launch {CHROMIUM} ({str(err).splitlines()[0]}): {INSTALL_HINT}")
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def dagster_ui(tmp_path: Path) -> Iterator[DagsterDev]:
    server = DagsterDev(tmp_path)
    server.start()
    try:
        yield server
    finally:
        left = server.stop()
        if left:
            print(f"killed leftover processes referencing {server.home}: {left}")


@pytest.fixture
def screenshots(tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    folder = Path(os.environ.get("MLOPS_UI_SCREENSHOTS") or tmp_path / "screenshots").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\n[test_ui_browser] screenshots: {folder}")
    return folder


# --------------------------------------------------------------------------- page helpers


def expected_assets(home: Path) -> dict[str, str]:
    """asset key -> group, from the code location itself (so the test follows the code)."""
    from mlops_dagster import build_definitions
    from mlops_dagster.settings import Settings

    graph = build_definitions(Settings.from_env({"MLOPS_HOME": str(home)})).resolve_asset_graph()
    return {
        key.to_user_string(): graph.get(key).group_name
        for key in graph.get_all_asset_keys()
        if graph.get(key).is_materializable
    }


def settle(page, timeout_ms: int = 15_000) -> None:
    """Wait for the network to go quiet, if it does (live queries may keep it busy)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_load_state("networkidle", timeout=timeout_ms)
    except PlaywrightTimeout:
        pass


def dismiss_community_popup(page) -> None:
    """The one-time "Join the Dagster community" dialog (config/dagster.yaml turns it off)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    skip = page.get_by_role("dialog").get_by_role("button", name="Skip", exact=True)
    try:
        skip.wait_for(state="visible", timeout=2_500)  # it opens 1 s after the page
    except PlaywrightTimeout:
        return
    skip.click()


def run_status(page) -> str | None:
    """The run page's status tag (read in one call: it changes while we look)."""
    texts = page.get_by_text(re.compile(r"^(Queued|Starting|Started|Success|Failure|Canceling|Canceled)$"))
    found = [text.strip() for text in texts.all_inner_texts()]
    return found[0] if found else None


def run_failure_report(instance, run_id: str) -> str:
    """Each failed step's errors (the cause chain, each with the frame that raised it), else the run's."""
    from dagster import DagsterEventType

    def describe(record) -> list[str]:
        lines = [f"{record.dagster_event.step_key or 'run'}: {record.message}"]
        error = getattr(record.dagster_event.event_specific_data, "error", None)
        while error is not None:
            lines.append("  " + error.message.strip().replace("\n", "\n  "))
            if error.stack:  # the innermost frame says whose code raised (file and line)
                lines.append("    raised at " + error.stack[-1].strip().splitlines()[0])
            error = error.cause or error.context
        return lines

    steps = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    records = steps or instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    return "\n".join(line for record in records for line in describe(record)) or "(no failure recorded)"


# --------------------------------------------------------------------------- the test


def test_materialize_all_from_the_ui(browser, dagster_ui: DagsterDev, screenshots: Path, capsys) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    started = time.monotonic()
    phases: dict[str, float] = {}
    assets = expected_assets(dagster_ui.home)
    assert "trained_model" in assets and GATED <= set(assets), sorted(assets)

    phases["dagster dev up"] = dagster_ui.wait_until_up()
    base = dagster_ui.url
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, service_workers="block")
    external: list[str] = []

    def only_local(route) -> None:
        parts = urlsplit(route.request.url)
        if parts.scheme in ("data", "blob") or parts.hostname == "127.0.0.1":
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(120_000)
    page = context.new_page()
    shot, instance = 0, None

    def screenshot(name: str) -> None:
        nonlocal shot
        shot += 1
        page.screenshot(path=str(screenshots / f"{shot:02d}-{name}.png"))

    try:
        # 1. The catalog lists every asset of the code location.
        t = time.monotonic()
        page.goto(f"{base}/assets")
        settle(page)
        for key in sorted(assets):
            # Each row links to the asset's page; its accessible name repeats the key ("k k").
            link = page.get_by_role("link").and_(page.locator(f'[href="/assets/{key}"]')).first
            expect(link).to_be_visible()
            expect(link).to_contain_text(key)
        screenshot("catalog")
        phases["catalog"] = time.monotonic() - t

        # 2. Materialize all on the global asset graph.
        t = time.monotonic()
        page.goto(f"{base}/asset-groups")
        settle(page)
        dismiss_community_popup(page)
        for group in sorted(set(assets.values())):
            expect(page.get_by_text(group, exact=True).first).to_be_visible()
        materialize_all = page.get_by_role("button", name=re.compile(r"Materialize all$"))
        expect(materialize_all).to_be_enabled()
        screenshot("graph")
        instance = dagster_ui.instance()
        runs_before = {run.run_id for run in instance.get_runs()}
        materialize_all.click()

        # The UI answers with a toast "Launched run <id>" and a View link; the instance is the fallback.
        run_id, source = None, "toast"
        view = page.get_by_role("link", name="View", exact=True)
        end = time.monotonic() + 30
        while run_id is None and time.monotonic() < end:
            # All hrefs in one call: the toast fades away on its own.
            for href in view.evaluate_all("links => links.map(link => link.getAttribute('href') || '')"):
                if m := re.match(r"^/runs/([0-9a-f-]{36})", href):
                    run_id = m.group(1)
            if run_id is None:
                page.wait_for_timeout(250)
        if run_id is None:
            new = [run.run_id for run in instance.get_runs() if run.run_id not in runs_before]
            run_id, source = (new[0] if new else None), "instance (no toast within 30 s)"
        assert run_id, "no run started within 30 s of clicking Materialize all"
        screenshot("graph-launched")
        phases["launch"] = time.monotonic() - t
        print(f"run {run_id} (found by the {source})")

        # 3. Follow the run to its end on the run page.
        t = time.monotonic()
        page.goto(f"{base}/runs/{run_id}")
        settle(page)
        status, last_reload = None, time.monotonic()
        while time.monotonic() - t < RUN_DEADLINE:
            status = run_status(page)
            if status in ("Success", "Failure", "Canceled"):
                break
            if time.monotonic() - last_reload > 60:  # the page follows the run live; reload in case it stalls
                page.reload()
                settle(page)
                last_reload = time.monotonic()
            page.wait_for_timeout(1_000)  # the page updates itself: reading its status is cheap
        screenshot("run")
        phases["run"] = time.monotonic() - t
        if status != "Success":
            pytest.fail(
                f"run {run_id} ended {status or f'not within {RUN_DEADLINE:.0f} s'}; its failures:\n"
                + run_failure_report(instance, run_id)
            )
        expect(page.get_by_text("Errored (0)")).to_be_visible()

        # The gated assets are skipped, not failed; everything else was materialized by this run.
        from dagster import AssetKey, DagsterEventType

        materialized = {
            record.dagster_event.asset_key.to_user_string()
            for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        }
        assert materialized == set(assets) - GATED, f"materialized by {run_id}: {sorted(materialized)}"

        # 4. trained_model's page shows the metrics of its latest materialization.
        t = time.monotonic()
        latest = instance.get_latest_materialization_event(AssetKey("trained_model"))
        recorded = latest.asset_materialization.metadata
        page.goto(f"{base}/assets/trained_model")
        settle(page)
        expect(page.get_by_text("Latest materialization", exact=True)).to_be_visible()
        shown = {}
        for metric in METRICS:
            row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=metric, exact=True)).first
            expect(row).to_be_visible()
            text = row.get_by_role("cell").last.inner_text().strip()
            try:
                shown[metric] = float(text)
            except ValueError:
                pytest.fail(f"trained_model's {metric} is shown as {text!r}, not a number")
            assert math.isfinite(shown[metric]), f"{metric} = {text}"
            assert math.isclose(shown[metric], recorded[metric].value, rel_tol=1e-9), (
                f"{metric}: page shows {text}, latest materialization has {recorded[metric].value}"
            )
        screenshot("trained_model")
        phases["trained_model page"] = time.monotonic() - t
    except BaseException as err:
        try:
            page.screenshot(path=str(screenshots / "failure.png"))
        except Exception:  # noqa: BLE001 - the browser may be what failed
            pass
        where = f"screenshots: {screenshots}\ndagster dev log: {dagster_ui.log_path}"
        print(f"[test_ui_browser] failed; {where}\n{_tail(dagster_ui.log_path, 25)}")
        err.add_note(where)
        raise
    finally:
        context.close()
        if instance is not None:
            instance.dispose()

    # 5. Nothing of the run may outlive it: stop dagster dev and the endpoints, then look.
    t = time.monotonic()
    left = dagster_ui.stop()
    phases["stop"] = time.monotonic() - t
    assert not left, f"processes still referencing {dagster_ui.home} after stop_endpoints and dagster dev: {left}"

    with capsys.disabled():
        timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items())
        print(f"\n[test_ui_browser] {time.monotonic() - started:.0f} s wall ({timings}); screenshots: {screenshots}")
        if external:
            print(f"[test_ui_browser] blocked requests to other hosts: {sorted(set(external))}")
        print(f"[test_ui_browser] trained_model metrics shown: {shown}")
