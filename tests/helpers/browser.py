"""Headless Chromium for the page tests: Debian's chromium driven by Playwright, with the
page's script errors and dialogs collected (a test asserts both stay empty)."""
import contextlib
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (apt install chromium)")


@contextlib.contextmanager
def browser_page():
    """Yields (page, errors, dialogs)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--no-first-run"])
        page = browser.new_page()
        errors, dialogs = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        try:
            yield page, errors, dialogs
        finally:
            browser.close()
