"""Screenshots of the gradio demo, one per tab after a real run, taken in headless Chromium (Debian's `chromium`).

    apt-get install -y chromium && pip install -e ".[demo]"
    python examples/demo_screenshot.py [--model checkpoints/shapes-tuna-2] [--output-dir outputs]

Starts `examples/gradio_app.py` on 127.0.0.1 and drives it with Playwright on `/usr/bin/chromium`: on the question
tab it picks the second example and clicks *Ask*; on the text-to-image tab it clicks *Generate*, chooses the second
picture and clicks *Use as edit source*, which opens the editing tab, where it clicks *Edit*. Writes
`demo_answer.png`, `demo_generate.png` and `demo_edit.png` (palette PNGs, small enough to commit) to `--output-dir`:
by default `outputs/` of the repository, which git ignores; `--output-dir docs` refreshes the README's pictures.
"""

import argparse
import os
import socket
from pathlib import Path

import PIL.Image
from gradio_app import TunaDemo  # examples/ is on the path of a script run from it
from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
TABS = ("answer", "generate", "edit")
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
TIMEOUT = 180_000  # ms, for a run on a busy CPU


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def save(page, path: Path) -> None:
    """A full-page screenshot, stored as a 256-colour PNG (the page is flat colour; a few times smaller)."""
    page.mouse.move(0, 0)  # a hovered gallery picture is drawn brightened
    page.wait_for_timeout(700)  # let the progress animation end and the images settle
    page.screenshot(path=str(path), full_page=True)
    image = PIL.Image.open(path).convert("RGB")
    image.quantize(256, method=PIL.Image.Quantize.MEDIANCUT, dither=PIL.Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path}")


def take(url: str, output_dir: Path, chromium: str) -> list[Path]:
    paths = [output_dir / f"demo_{tab}.png" for tab in TABS]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--headless", *CHROMIUM_FLAGS])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT)
        page.goto(url)

        page.locator("#tuna-answer-examples tbody tr").nth(1).click()  # gradio 6 draws image examples as a table
        page.get_by_role("button", name="Ask", exact=True).click()
        expect(page.get_by_label("Answer")).not_to_have_value("", timeout=TIMEOUT)
        save(page, paths[0])

        page.get_by_role("tab", name="Text-to-image").click()
        page.get_by_role("button", name="Generate", exact=True).click()
        thumbnails = page.locator("#tuna-gallery .thumbnail-item")
        expect(thumbnails).to_have_count(4, timeout=TIMEOUT)
        thumbnails.nth(1).click()  # opens the preview of the chosen picture
        page.wait_for_timeout(300)
        page.keyboard.press("Escape")  # back to the grid, the choice kept
        save(page, paths[1])

        page.get_by_role("button", name="Use as edit source").click()
        expect(page.locator("#tuna-source img")).to_have_count(1, timeout=TIMEOUT)
        page.get_by_role("button", name="Edit", exact=True).click()
        expect(page.locator("#tuna-edited img")).to_have_count(1, timeout=TIMEOUT)
        save(page, paths[2])
        browser.close()
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "checkpoints" / "shapes-tuna-2"))
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs", help="where the PNGs go")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    demo = TunaDemo(args.model).launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True)
    try:
        take(demo.local_url, args.output_dir, args.chromium)
    finally:
        demo.close()


if __name__ == "__main__":
    main()
