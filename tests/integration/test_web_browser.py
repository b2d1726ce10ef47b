"""The dashboard in a real headless browser: Debian's chromium, driven by Selenium.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``.ci/run`` installs them);
without them the test is skipped, saying so. The dashboard is served by uvicorn in
this test's event loop; the blocking WebDriver calls run in a thread.

Set ``ASYNCJOBS_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to also write the README's
screenshot.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvicorn

from asyncjobs import App
from asyncjobs._retries import DeadLetters
from asyncjobs._throughput import count
from asyncjobs.runner import Worker
from asyncjobs.testing import free_port
from asyncjobs.web import dashboard
from tests.corejobs import billing_job
from tests.helpers import eventually
from tests.recjobs import pending_rows  # noqa: F401 -- registers the reconciler

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="no /usr/bin/chromium or /usr/bin/chromedriver (apt-get install chromium "
        "chromium-driver; .ci/run does)",
    ),
]


@pytest.fixture
async def served(app: App) -> AsyncIterator[str]:
    """The dashboard of ``app`` on a free local port; its base URL."""
    port = free_port()
    config = uvicorn.Config(
        dashboard(app), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, within=10, what="uvicorn started")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


@pytest.fixture
def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def _wait(driver: Any, check: Callable[[Any], Any], what: str, within: float = 10.0) -> Any:
    """WebDriver's own wait: polls ``check(driver)`` until true, with a deadline."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, within, poll_frequency=0.05).until(check, message=what)


async def _state(app: App, redis: aioredis.Redis) -> int:
    """Jobs in two queues, a dead letter, finished jobs in the last hour; the dead letter's id."""
    await app.migrate()
    await app.enqueue_many(billing_job, [(n,) for n in range(40)])
    await app.enqueue(billing_job, 99, _defer_by=900)
    pipe = redis.pipeline(transaction=False)
    now = time.time()
    for minutes_ago in range(1, 60):  # what workers counted over the last hour
        count(pipe, 20 + (minutes_ago * 7) % 23, (minutes_ago % 9 == 0) * 3, now - 60 * minutes_ago)
    await pipe.execute()
    return await DeadLetters(app).record(
        job_name="echo",
        job_id="original-1",
        queue=app.settings.queue_name,
        args=("<script>alert(1)</script>",),
        kwargs={},
        redact=False,
        tries=3,
        exc=RuntimeError("the mail server said no"),
        first_failed_at=None,
    )


async def test_an_operator_stops_a_job_and_retries_a_dead_letter_in_chromium(
    app: App, redis: aioredis.Redis, served: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    dead_id = await _state(app, redis)

    def stop_a_job() -> None:
        browser.get(served + "/")
        assert "Overview" in browser.title
        browser.find_element(By.LINK_TEXT, "Jobs").click()
        form = browser.find_element(By.CSS_SELECTOR, 'form[action$="/jobs/stamp/stop"]')
        form.find_element(By.NAME, "reason").send_keys("printer on fire")
        form.find_element(By.TAG_NAME, "button").click()
        _wait(browser, lambda d: "stamp stopped" in d.page_source, "the stop notice")
        assert "STOPPED" in browser.find_element(By.TAG_NAME, "main").text

    await asyncio.to_thread(stop_a_job)
    assert await app.enqueue("stamp", 1) is None

    def retry_the_dead_letter() -> None:
        browser.get(served + "/dead")
        row = browser.find_element(By.ID, f"dead-{dead_id}")
        assert "<script>alert(1)</script>" in row.text  # shown as text, not run
        row.find_element(By.CSS_SELECTOR, 'form[action$="/retry"] button').click()
        _wait(browser, lambda d: "retried" in d.page_source, "the retry notice")

    await asyncio.to_thread(retry_the_dead_letter)
    worker = Worker(app, burst=True, handle_signals=False, poll_delay=0.01, queues=["arq:queue"])
    await asyncio.wait_for(worker.run(), 30)

    def the_letter_is_gone() -> None:
        browser.get(served + "/dead")
        _wait(browser, lambda d: not d.find_elements(By.ID, f"dead-{dead_id}"), "letter gone")
        assert "No dead letters" in browser.page_source

    await asyncio.to_thread(the_letter_is_gone)

    def screenshot() -> Path:
        browser.get(served + "/")
        _wait(browser, lambda d: d.find_elements(By.TAG_NAME, "svg"), "the chart")
        shot = tmp_path / "overview.png"
        assert browser.save_screenshot(str(shot))
        wanted = os.environ.get("ASYNCJOBS_DASHBOARD_SCREENSHOT")
        if wanted:
            browser.save_screenshot(wanted)
        return shot

    shot = await asyncio.to_thread(screenshot)
    assert shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")
