"""Buys the demo's Field Guide in the running sandbox with a real browser.

    scripts/sandbox check        (runs this against https://localhost:$PAYDROP_DEMO_HTTPS_PORT)

Headless Chromium opens the product page over HTTPS (the sandbox's
self-signed certificate accepted), pays with the test card 4242 4242 4242 4242
through localstripe's Stripe.js, follows the download link and compares the
file with files/sample-assets/field-guide.pdf. Exits 1 with the page's text
when anything differs.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

from playwright.sync_api import Error, sync_playwright

SAMPLE = Path(__file__).resolve().parent.parent / "files" / "sample-assets" / "field-guide.pdf"
CARD = (("number", "4242424242424242"), ("exp_month", "12"), ("exp_year", "34"),
        ("cvc", "123"), ("postal_code", "10115"))


def main(url: str) -> int:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"])
        context = browser.new_context(ignore_https_errors=True, accept_downloads=True)
        context.set_default_timeout(20_000)
        page = context.new_page()
        try:
            page.goto(f"{url}/products/field-guide")
            page.get_by_label("E-mail address for your receipt").fill("demo@example.com")
            for placeholder, value in CARD:
                page.get_by_placeholder(placeholder, exact=True).fill(value)
            page.get_by_role("button", name=re.compile("^Pay")).click()
            page.wait_for_url(re.compile(r"/checkout/orders/"))
            with page.expect_download() as info:
                page.get_by_role("link", name="Download Field Guide").click()
            data = Path(info.value.path()).read_bytes()
        except Error as exc:
            print(f"sandbox check: the purchase failed: {exc}\n{page.inner_text('body')[:1500]}", file=sys.stderr)
            return 1
        finally:
            browser.close()
    if data != SAMPLE.read_bytes():
        print("sandbox check: the downloaded file differs from the sample", file=sys.stderr)
        return 1
    print(f"sandbox check: paid with 4242, downloaded field-guide.pdf ({len(data)} bytes, "
          f"sha256 {hashlib.sha256(data).hexdigest()[:16]}...) identical to the sample")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
