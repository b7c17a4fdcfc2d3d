"""Speed of `archsae serve` (issue 13): statistics cache, page first paint in Chromium, upload decomposition.

    .venv/bin/python benchmarks/explorer_speed.py --run-dir RUN      # a run of `archsae run`; prints Markdown

1. The per-concept statistics of every model, computed from scratch (RUN/explorer/stats is deleted first,
   unless --pages-only), then, as `archsae serve` starts, loaded from the cache with the classifier head.
2. The app served as `archsae serve` serves it, each page opened in headless Chromium (Debian's, through
   Selenium) three times; reported: first-contentful-paint (Performance API, from navigation start) and the
   time until every image of the page has loaded (lazy ones made eager), on the first visit (nothing cached
   in the browser or the server) and the best of the two visits after it.
3. An upload: the POST of one store image to /upload (decode, backbone forward, SAE, page with its heatmaps),
   through Flask's test client, five times after a first request that loads the backbone; best and median.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--pages-only", action="store_true", help="skip recomputing the statistics")
    args = parser.parse_args()

    from archsae.explorer import RunView, create_app

    rows = []
    if not args.pages_only:  # the cache is only a cache: computed again from scratch
        shutil.rmtree(args.run_dir / "explorer" / "stats", ignore_errors=True)
        view = RunView(args.run_dir)
        for name in view.paths:
            t = time.perf_counter()
            view.stats(name)
            rows.append((f"statistics of {name} (k = {len(view.stats(name).freq):,}), computed",
                         f"{time.perf_counter() - t:.1f} s"))
    t = time.perf_counter()
    view = RunView(args.run_dir)
    view.prepare()  # as `archsae serve` does before it listens
    rows.append((f"start: statistics of all {len(view.paths)} models from the cache, and the classifier head",
                 f"{time.perf_counter() - t:.2f} s"))

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log in the table's output
    server = make_server("127.0.0.1", 0, create_app(view), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    name = next(iter(view.paths))
    s = view.stats(name)
    concept = int(s.freq.argmax())
    image = int(s.top_images[concept][0])  # -1 for a store without images
    pages = {"models": "/", "concepts (page 1)": f"/model/{name}/concepts",
             "concepts (page 20, by stability)": f"/model/{name}/concepts?sort=stability&page=20",
             "concepts (search)": f"/model/{name}/concepts?q={s.label[concept].split('/')[0] or concept}&sort=purity",
             "concept": f"/model/{name}/concept/{concept}"}
    if view.store.images:
        pages["image"] = f"/image/{image}?model={name}"
    if view.heads[0] is not None:
        pages.update({"classes": f"/classes?model={name}", "class": f"/class/{int(s.head_class[concept])}?model={name}"})
    browser = _browser()
    try:
        for title, url in pages.items():
            paints, loads = [], []
            for _ in range(3):
                browser.get(base + url)
                paints.append(_first_paint(browser))
                browser.execute_script("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
                while not browser.execute_script("return Array.from(document.images).every(i => i.complete)"):
                    time.sleep(0.02)
                nav = browser.execute_script("return performance.timing.navigationStart")
                now = browser.execute_script("return Date.now()")
                loads.append(now - nav)
            rows.append((f"page: {title}", f"first paint {paints[0]:.0f} ms (again: {min(paints[1:]):.0f} ms); "
                                           f"all images {loads[0]:.0f} ms (again: {min(loads[1:]):.0f} ms)"))
    finally:
        browser.quit()

    if not view.store.images:  # an imported matrix: nothing to upload against
        server.shutdown()
        return _print(args.run_dir.name, rows)
    client = create_app(view).test_client()
    path = Path(view.store.images[image]["path"])
    times = []
    for i in range(6):
        t = time.perf_counter()
        r = client.post("/upload", data={"model": name, "image": (path.open("rb"), path.name)})
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text[:500]
    rows.append(("upload: decompose one image (POST /upload)",
                 f"best {min(times[1:]):.2f} s, median {statistics.median(times[1:]):.2f} s (first {times[0]:.2f} s)"))
    server.shutdown()
    _print(args.run_dir.name, rows)


def _print(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"| {title} | time |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


def _first_paint(browser) -> float:
    """ms from navigation start to the first contentful paint (the Performance API records it shortly after)."""
    for _ in range(100):
        fcp = browser.execute_script("const e = performance.getEntriesByName('first-contentful-paint');"
                                     "return e.length ? e[0].startTime : null")
        if fcp is not None:
            return fcp
        time.sleep(0.02)
    raise RuntimeError(f"no first-contentful-paint entry for {browser.current_url}")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


if __name__ == "__main__":
    main()
