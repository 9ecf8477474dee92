"""The monitor page in a real browser: headless Chromium driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); each
test skips, saying why, where Chromium cannot start. The farm runs in this
process and a real farmhand worker (``python -m agent``) works it; Selenium's
blocking calls run in worker threads while the farm serves. Every wait is an
explicit wait on a DOM condition (``WebDriverWait``), never a sleep.

A screenshot of each view is written to ``$FARMHAND_MONITOR_SCREENSHOTS`` when
set (the README's come from ``docs/monitor/``, made that way), else to the
test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.mockfarm import FarmConfig, MonitorConfig, open_mock_farm
from tests.workerproc import open_worker_process

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_SECONDS = 60

#: Prints a line, waits for the test's go-ahead (a file), prints another, then waits
#: to be cancelled. (The lines are put together as it runs: the session log shows the
#: command line too, which must not contain them.)
TASK = """
import os, sys, time
print("first line", "from the task", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
print("after the", "go-ahead", flush=True)
while True:
    time.sleep(1)
"""


def job(go: Path) -> dict[str, Any]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "monitored render",
        "steps": [
            {
                "name": "Render",
                "parameterSpace": {
                    "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": "1-3"}]
                },
                "script": {
                    "actions": {"onRun": {"command": sys.executable, "args": ["-c", TASK, str(go)]}}
                },
            }
        ],
    }


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium, or the test is skipped saying why it cannot start."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(
            f"no Chromium ({CHROMIUM}) or chromedriver ({CHROMEDRIVER}): "
            "apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        pytest.skip(f"Chromium cannot start here: {exc.msg or exc}")
    try:
        yield driver
    finally:
        driver.quit()


def shots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("FARMHAND_MONITOR_SCREENSHOTS") or tmp_path / "shots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking Selenium call, in a thread: the farm keeps serving meanwhile."""
    return await trio.to_thread.run_sync(fn, *args)


async def until(driver: Any, condition: Callable[[Any], Any]) -> Any:
    """Selenium's explicit wait on a DOM condition."""
    wait = WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.05)
    return await call(wait.until, condition)


def css(selector: str) -> tuple[str, str]:
    return (By.CSS_SELECTOR, selector)


async def screenshot(driver: Any, directory: Path, name: str) -> None:
    path = directory / f"{name}.png"
    assert await call(driver.save_screenshot, str(path)), path
    assert path.stat().st_size > 0


async def test_the_page_follows_a_job_on_a_real_worker_and_cancels_it(
    browser: Any, tmp_path: Path
) -> None:
    """The job list shows a submitted job without a reload; the session's log follows
    the running task; Cancel on the page cancels the task on the worker."""
    directory = shots(tmp_path)
    go = tmp_path / "go"
    # The worker reports a task running at its next sync: soon, so the page shows it soon.
    config = FarmConfig(max_retries_per_task=0, update_interval_seconds=2)
    async with (
        open_mock_farm(config=config, monitor=MonitorConfig(actions=True)) as farm,
        open_worker_process(farm, tmp_path / "worker"),
    ):
        await call(browser.get, farm.monitor_url)
        await until(browser, ec.text_to_be_present_in_element(css("#live"), "live"))
        await until(browser, ec.text_to_be_present_in_element(css("#jobs"), "no jobs yet"))

        job_id = farm.create_job(job(go), priority=60)
        row = css(f'tr[data-job-id="{job_id}"]')
        await until(browser, ec.presence_of_element_located(row))
        # The worker takes it: the row shows the job running, still without a reload.
        await until(
            browser,
            ec.presence_of_element_located(
                css(f'tr[data-job-id="{job_id}"] .job-status [data-status="RUNNING"]')
            ),
        )
        await screenshot(browser, directory, "jobs")

        await call((await call(browser.find_element, *row)).click)
        await until(browser, ec.presence_of_element_located(css("tr[data-session-id]")))
        await until(
            browser, ec.presence_of_element_located(css('tr[data-task-id] [data-status="RUNNING"]'))
        )
        await screenshot(browser, directory, "job")

        link = await call(browser.find_element, *css("tr[data-session-id] a"))
        await call(link.click)
        await until(
            browser, ec.text_to_be_present_in_element(css("#log"), "first line from the task")
        )
        # The task goes on only when told; its next line reaches the open page.
        assert "after the go-ahead" not in (await call(browser.find_element, *css("#log"))).text
        go.touch()
        await until(browser, ec.text_to_be_present_in_element(css("#log"), "after the go-ahead"))
        await screenshot(browser, directory, "session")

        session = farm.job(job_id).sessions[0]
        running = next(a for a in session.actions if a.kind == "taskRun")
        await call(browser.get, f"{farm.monitor_url}#/jobs/{job_id}")
        cancel = await until(
            browser, ec.element_to_be_clickable(css('button[data-action="cancel_job"]'))
        )
        await call(cancel.click)
        await until(
            browser,
            ec.presence_of_element_located(css('#job-status [data-status="CANCELED"]')),
        )
        # The worker heard of it and cancelled the running action (its report says so).
        with trio.fail_after(WAIT_SECONDS):
            await farm.wait_until(lambda: running.status == "CANCELED")
            await farm.wait_until(lambda: not farm.job(job_id).active_sessions)
        assert farm.job(job_id).status == "CANCELED"
        assert running.task is not None and running.task.status == "CANCELED"
        await until(
            browser,
            ec.presence_of_element_located(
                css(f'tr[data-task-id="{running.task.task_id}"] [data-status="CANCELED"]')
            ),
        )

        await call(browser.get, f"{farm.monitor_url}#/workers")
        await until(browser, ec.presence_of_element_located(css("tr[data-worker-id]")))
        await until(browser, ec.text_to_be_present_in_element(css("#workers"), "idle"))
        await screenshot(browser, directory, "workers")
        await call(browser.get, f"{farm.monitor_url}#/farm")
        await until(browser, ec.presence_of_element_located(css("tr[data-queue-id]")))
        await screenshot(browser, directory, "farm")


async def test_a_big_job_is_read_a_page_at_a_time(browser: Any, tmp_path: Path) -> None:
    """A step of 5,000 tasks shows 50 rows and pages on the server; a read-only farm's
    buttons are disabled, and it says so."""
    async with open_mock_farm(monitor=MonitorConfig()) as farm:
        job_id = farm.create_job(
            {
                **job(tmp_path / "never"),
                "name": "a big job",
                "steps": [
                    {
                        **job(tmp_path / "never")["steps"][0],
                        "parameterSpace": {
                            "taskParameterDefinitions": [
                                {"name": "Frame", "type": "INT", "range": "1-5000"}
                            ]
                        },
                    }
                ],
            }
        )
        await call(browser.get, f"{farm.monitor_url}#/jobs/{job_id}")
        await until(browser, ec.text_to_be_present_in_element(css("#mode"), "read-only"))
        await until(
            browser, ec.text_to_be_present_in_element(css(".pager .page-range"), "1–50 of 5,000")
        )
        rows = await call(browser.find_elements, *css("tr[data-task-id]"))
        assert len(rows) == 50
        cancel = await call(browser.find_element, *css('button[data-action="cancel_job"]'))
        assert not await call(cancel.is_enabled)
        following = await call(browser.find_element, *css('#view .pager [data-page="next"]'))
        await call(following.click)
        await until(
            browser, ec.text_to_be_present_in_element(css(".pager .page-range"), "51–100 of 5,000")
        )
        await until(browser, ec.presence_of_element_located(css('tr[data-task-id$="-50"]')))
        assert farm.job(job_id).status == "READY"
