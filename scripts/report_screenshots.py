"""Screenshots of a run's report for the docs: its overview and one class page.

.venv/bin/python scripts/report_screenshots.py runs/demo [--class-index 9] [--out docs]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from diversynth.stages.report.browser import chromium, file_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--class-index", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    site = args.run / "report"
    driver = chromium(1280, 900)
    try:
        driver.get(file_url(site / "index.html"))
        time.sleep(0.5)
        driver.save_screenshot(str(args.out / "report-overview.png"))
        driver.get(file_url(site / "classes" / f"{args.class_index:05d}.html"))
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        time.sleep(0.5)
        thumb = driver.find_elements("css selector", ".thumb")[3]
        thumb.click()
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        time.sleep(0.3)
        driver.save_screenshot(str(args.out / "report-class.png"))
    finally:
        driver.quit()
    print(f"wrote {args.out / 'report-overview.png'} and {args.out / 'report-class.png'}")


if __name__ == "__main__":
    main()
