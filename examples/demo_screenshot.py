"""Screenshot of the gradio demo after a text-to-image run, taken in headless Chromium (Debian's `chromium`).

    apt-get install -y chromium && pip install -e ".[demo]"
    python examples/demo_screenshot.py [--model checkpoints/shapes-tuna-2] [--output docs/demo.png]

Starts `examples/gradio_app.py` on 127.0.0.1, opens it with Playwright driving `/usr/bin/chromium`, clicks
*Generate* on the text-to-image tab, waits for the images and saves the page.
"""

import argparse
import os
import socket
from pathlib import Path

from gradio_app import TunaDemo  # examples/ is on the path of a script run from it
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
# Without the background-networking flags Chromium keeps dialing Google's hosts, which a closed network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "checkpoints" / "shapes-tuna-2"))
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "demo.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = TunaDemo(args.model).build()
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo.local_url)
            page.get_by_role("tab", name="Text-to-image").click()
            page.get_by_role("button", name="Generate").click()
            page.locator(".thumbnail-item img").first.wait_for(timeout=120_000)  # gradio 6's gallery items
            page.wait_for_timeout(500)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
