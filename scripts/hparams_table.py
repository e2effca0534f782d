"""The columns TensorBoard's HParams tab shows by default, read in a headless Chromium (docs/sweeps.md).

    tensorboard --logdir multirun/<date>/<time> --port 6006 &
    /tmp/browser-venv/bin/python scripts/hparams_table.py http://localhost:6006

A manual check, not a test: it needs Debian's `chromium` and `chromium-driver` and selenium in a venv of its own
(`python3 -m venv /tmp/browser-venv && /tmp/browser-venv/bin/pip install selenium`), none of them hgmldl's
dependencies. It prints the table view's header row, left to right.
"""

import argparse

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

# The table is a vaadin-grid deep in the dashboard's shadow DOM; each header cell shows a slotted cell content.
HEADERS = """
function find(root) {
  for (const element of root.querySelectorAll('*')) {
    if (element.tagName === 'VAADIN-GRID') return element;
    const found = element.shadowRoot && find(element.shadowRoot);
    if (found) return found;
  }
  return null;
}
const grid = find(document);
return grid && [...grid.shadowRoot.querySelectorAll('thead th')].map(
  th => th.querySelector('slot').assignedNodes().map(node => node.textContent.trim()).join(' ').replace(/\\s+/g, ' '));
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the running TensorBoard, e.g. http://localhost:6006")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args()
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(args.chromedriver), options=options)
    try:
        browser.get(args.url.rstrip("/") + "/#hparams")
        # The header row fills once the dashboard has fetched the experiment and its session groups.
        headers = WebDriverWait(browser, 60).until(lambda b: (h := b.execute_script(HEADERS)) and len(h) > 2 and h)
        print(" | ".join(headers))
    finally:
        browser.quit()


if __name__ == "__main__":
    main()
