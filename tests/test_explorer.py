"""`archsae serve`: the concept statistics against their definitions, and every page in a real browser
(Debian's Chromium through its chromedriver, installed by scripts/install.sh)."""

import io
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from archsae import metrics
from archsae.explorer import RunView, create_app
from archsae.explorer import stats as stats_module


@pytest.fixture(scope="module")
def view(quick_run):
    return RunView(quick_run)


def test_concept_statistics_match_their_definitions(view):
    name = "models/topk-s0"
    s = view.stats(name)
    model, store = view.model(name), view.store
    codes = torch.cat([model.encode(store.read_shard(i).acts_md) for i in range(store.n_shards)])
    images = torch.cat([store.read_shard(i).image_m for i in range(store.n_shards)])
    np.testing.assert_allclose(s.freq, (codes > 0).float().mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(s.peak, codes.max(0).values.numpy(), rtol=1e-5)
    assert (s.hist.sum(1) == (codes > 0).sum(0).numpy()).all()  # the quick store is under HIST_ENTRIES
    busiest = int(np.argmax(s.freq))
    per_image = torch.zeros(len(store.images)).scatter_reduce_(0, images, codes[:, busiest], reduce="amax")
    # images by their largest token activation, one per source photo or stamp (the demo set records them)
    assert len(set(view.sources)) < len(store.images)  # several images come from one source
    expected, seen = [], set()
    for i in per_image.argsort(descending=True).tolist():
        if view.sources[i] not in seen and len(expected) < stats_module.TOP:
            seen.add(view.sources[i])
            expected.append(i)
    assert list(s.top_images[busiest]) == expected
    np.testing.assert_allclose(s.top_values[busiest], per_image[expected].numpy(), rtol=1e-5)
    for row in s.top_images:  # never two images of one source
        row = row[row >= 0]
        assert len(set(view.sources[row])) == len(row)
    q = s.quantile_images[busiest]
    assert (q >= 0).all() and per_image[q[0]].max() <= per_image[q[-1]].min()  # lower quantiles, lower peaks
    np.testing.assert_allclose(s.quantile_values[busiest], per_image[q].numpy(), rtol=1e-5)
    assert 0 < s.purity[busiest] <= 1 and s.label[busiest] in {im["label"] for im in store.images}
    index, cos = s.matches["models/topk-s1"]  # the Hungarian match: stability is their mean |cos|
    stability = metrics.stability(view.atoms(name), view.atoms("models/topk-s1"))
    assert np.abs(cos).mean() == pytest.approx(stability, abs=1e-5) and sorted(index) == list(range(len(index)))
    assert s.nearest.max() == pytest.approx(metrics.coherence(view.atoms(name)), abs=1e-6)
    assert s.candidate_images is None and view.stats("models/ra-topk-s0").candidate_images is not None


def test_an_image_split_across_encoding_chunks_keeps_its_largest_activation(view, monkeypatch):
    """Chunks of 100 tokens cut images of 49 tokens in two: each image's peak is still its largest token."""
    name = "models/topk-s0"
    model, store = view.model(name), view.store
    monkeypatch.setattr(stats_module, "ENCODE_ENTRIES", 100 * model.k)
    s = stats_module.compute_stats(model, store)
    codes = torch.cat([model.encode(store.read_shard(i).acts_md) for i in range(store.n_shards)])
    images = torch.cat([store.read_shard(i).image_m for i in range(store.n_shards)])
    per_image = torch.zeros(len(store.images), model.k).scatter_reduce_(
        0, images[:, None].expand_as(codes), codes, reduce="amax")
    fired = s.top_images[:, 0] >= 0
    np.testing.assert_allclose(s.top_values[fired, 0], per_image.max(0).values.numpy()[fired], rtol=1e-5)
    assert (s.top_values[:, 0] <= s.peak * (1 + 1e-6)).all()  # no image above the concept's peak
    np.testing.assert_array_equal(s.freq, view.stats(name).freq)


def test_decomposition_shares_sum_to_one_and_follow_the_codes(view):
    name = "models/ra-topk-s0"
    dec = view.decompose_stored(name, 3)
    z = torch.from_numpy(dec.codes_tk)
    atoms = view.atoms(name)
    recon = z @ atoms
    assert dec.share_k.sum() == pytest.approx(1.0, abs=1e-4)
    i = int(np.argmax(dec.share_k))
    expected = (z[:, i:i + 1] * atoms[i] * recon).sum() / (recon * recon).sum()
    assert dec.share_k[i] == pytest.approx(float(expected), rel=1e-4)
    assert (dec.share_k[(dec.codes_tk > 0).sum(0) == 0] == 0).all()  # a concept that never fires explains nothing


def test_statistics_are_cached_and_recomputed_when_the_model_changes(quick_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(quick_run, run, ignore=shutil.ignore_patterns("stability", "benchmarks", "report", "images"))
    first = RunView(run).stats("models/topk-s0")
    calls = []
    real = stats_module.compute_stats
    monkeypatch.setattr("archsae.explorer.run.compute_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = RunView(run).stats("models/topk-s0")
    assert not calls and (again.top_images == first.top_images).all() and again.label == first.label
    peer = run / "models" / "topk-s1"  # another run of its group changed: the matches are stale
    shutil.copy(run / "models" / "topk-s0" / "model.safetensors", peer / "model.safetensors")
    redone = RunView(run).stats("models/topk-s0")
    assert calls and np.abs(redone.matches["models/topk-s1"][1]).min() > 0.999


def test_the_backbone_is_loaded_once_for_class_directions_and_uploads(quick_run, monkeypatch):
    import archsae.models
    from archsae.evaluate import class_directions

    real, loads = archsae.models.load_backbone, []
    monkeypatch.setattr(archsae.models, "load_backbone", lambda *a, **kw: loads.append(a) or real(*a, **kw))
    fresh = RunView(quick_run)
    heads = fresh.heads[0]
    fresh.backbone
    assert len(loads) == 1
    assert torch.equal(heads, class_directions(fresh.store)[0])  # the same directions as a load of their own


def test_bad_requests_get_a_clear_answer_and_change_nothing(view):
    client = create_app(view).test_client()
    bad = client.post("/upload", data={"model": "models/topk-s0", "image": (io.BytesIO(b"not an image"), "x.jpg")})
    assert bad.status_code == 400 and "x.jpg is not an image archsae can read" in bad.text and "BytesIO" not in bad.text
    assert client.post("/upload", data={"model": "models/topk-s0"}).status_code == 400
    assert client.get("/model/models/nope/concepts").status_code == 404
    assert client.get(f"/image/{len(view.store.images)}").status_code == 404
    assert client.get("/figure/store/store.json").status_code == 404  # only the run's figures are served
    assert client.get("/model/models/topk-s0/concepts?page=999&sort=nonsense").status_code == 200  # clamped


def test_serve_on_a_taken_port_says_so(view, quick_run):
    import socket

    from typer.testing import CliRunner

    from archsae.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(app, ["serve", "--run-dir", str(quick_run), "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 2 and "choose another --port" in result.output, result.output
    assert "statistics" not in result.output  # said before any statistics are computed
    for port in ("99999", "-5"):  # not a port (99999 was silently taken as another one)
        result = CliRunner().invoke(app, ["serve", "--run-dir", str(quick_run), "--port", port])
        assert result.exit_code == 2 and "--port must be in 0-65535" in result.output, result.output


# ---- in a real browser ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are missing: run scripts/install.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(60)
    chrome.shots = tmp_path_factory.mktemp("screenshots")
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def server(view):
    from werkzeug.serving import make_server

    view.prepare()  # as `archsae serve` does before it listens
    srv = make_server("127.0.0.1", 0, create_app(view), threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@contextmanager
def page(browser, url: str, shot: str):
    """Open `url`; on any failure inside, keep a screenshot (its path is in the error)."""
    browser.get(url)
    try:
        yield browser
        _check_page(browser)
    except BaseException as e:
        path = Path(browser.shots) / f"{shot}.png"
        browser.save_screenshot(str(path))
        raise AssertionError(f"{e} (screenshot: {path})") from e


def _check_page(browser):
    """Every image loaded (lazy ones too), and nothing on the console."""
    script = ("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager');"
              "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    deadline = time.monotonic() + 30
    while (broken := browser.execute_script(script)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not broken, f"images not loaded: {broken[:3]}"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors


def _wait_for_title(browser, start: str) -> None:
    """Wait (up to 30 s) until the page that a click or submit opened has a heading starting with `start`."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    mid_navigation = (NoSuchElementException, StaleElementReferenceException)  # the old page is going away
    WebDriverWait(browser, 30, ignored_exceptions=mid_navigation).until(
        lambda b: b.find_element(By.TAG_NAME, "h1").text.startswith(start))


def _ids(browser, css: str, attr: str = "data-concept") -> list[int]:
    from selenium.webdriver.common.by import By

    return [int(e.get_attribute(attr)) for e in browser.find_elements(By.CSS_SELECTOR, css)]


def test_pages_in_a_real_browser(view, server, browser, quick_run):
    from selenium.webdriver.common.by import By

    with page(browser, server + "/", "models") as b:
        links = [e.text for e in b.find_elements(By.CSS_SELECTOR, "#table1 a.model-link")]
        assert set(links) == {"ra-topk-s0", "ra-topk-s1", "topk-s0", "topk-s1"}
        assert "(1 pair)" in b.find_element(By.ID, "table1").text  # stability belongs to the pair of runs
        b.find_element(By.LINK_TEXT, "topk-s0").click()
        _wait_for_title(b, "Concepts of models/topk-s0")

    name = "models/topk-s0"
    s = view.stats(name)
    with page(browser, browser.current_url, "concepts") as b:
        shown = _ids(b, "#concepts tr[data-concept]")
        assert len(shown) == 50 and shown == [int(i) for i in np.argsort(-s.freq, kind="stable")[:50]]
        label = s.label[shown[0]].split("/")[0]
        box = b.find_element(By.ID, "q")
        box.send_keys(label)
        box.submit()
        _wait_for_title(b, "Concepts of")
        assert "q=" in b.current_url
    with page(browser, browser.current_url, "search") as b:
        found = _ids(b, "#concepts tr[data-concept]")
        matching = {i for i in np.flatnonzero(s.freq > 0) if label in s.label[i].lower()
                    or label in view.class_names[s.head_class[i]].lower()}
        assert found and set(found) <= matching and f"{len(matching):,} concepts" in b.find_element(By.ID, "found").text

    concept = shown[0]
    with page(browser, f"{server}/model/{name}/concept/{concept}", "concept") as b:
        tops = b.find_elements(By.CSS_SELECTOR, "#top-images img")
        assert [t.get_attribute("alt") for t in tops] == [f"image {i}" for i in s.top_images[concept] if i >= 0]
        peer = b.find_element(By.CSS_SELECTOR, ".peer a").text
        assert peer == f"concept {s.matches['models/topk-s1'][0][concept]} of models/topk-s1"
        assert len(b.find_elements(By.CSS_SELECTOR, "#hist div")) == stats_module.BINS

    image = int(s.top_images[concept][0])
    with page(browser, f"{server}/image/{image}?model={name}", "image") as b:
        dec = view.decompose_stored(name, image)
        assert _ids(b, "#parts a")[:5] == [int(i) for i in np.argsort(-dec.share_k)[:5]]
        cell = b.find_element(By.CSS_SELECTOR, ".tokens button[data-row='3'][data-col='4']")
        cell.click()
        listed = [int(a.get_attribute("data-concept")) for a in b.find_elements(By.CSS_SELECTOR, "#token-list a")]
        t = int(np.flatnonzero(dec.pos_t == 3 * 7 + 4)[0])
        z = dec.codes_tk[t]
        assert listed == [int(i) for i in np.argsort(-z)[:len(listed)]] and len(listed) == min(12, (z > 0).sum())
        assert f"of {(z > 0).sum()} active concepts" in b.find_element(By.ID, "token-concepts").text

    with page(browser, f"{server}/image/{image}?model={name}", "upload") as b:
        b.find_element(By.ID, "upload-input").send_keys(str(Path(view.store.images[image]["path"]).resolve()))
        b.find_element(By.CSS_SELECTOR, "#upload-form button").click()
        _wait_for_title(b, "uploaded:")
        # the same photo through the backbone again: the same decomposition as the stored tokens
        assert _ids(b, "#parts a")[:3] == [int(i) for i in np.argsort(-dec.share_k)[:3]]

    with page(browser, f"{server}/images?model={name}&seed=2", "images") as b:  # pick any image of the store
        assert len(b.find_elements(By.CSS_SELECTOR, "#store-images img")) == 48
        box = b.find_element(By.ID, "image-number")
        box.send_keys(str(image))
        box.submit()
        _wait_for_title(b, f"image {image}")

    with page(browser, f"{server}/classes?model={name}&q=shark", "classes") as b:
        rows = b.find_elements(By.CSS_SELECTOR, "#classes td.text a")
        assert rows and all("shark" in r.text.lower() for r in rows)
        rows[0].click()
        _wait_for_title(b, "Class “")
        assert len(b.find_elements(By.CSS_SELECTOR, ".class-concept")) == 12

    with page(browser, f"{server}/model/{name}/concept/999999", "404") as b:
        assert "has concepts 0.." in b.find_element(By.ID, "error").text
        b.get_log("browser")  # the 404 itself is logged; nothing else may be

    report = quick_run / "report"
    with page(browser, report.resolve().as_uri() + "/index.html", "report") as b:
        assert b.find_elements(By.CSS_SELECTOR, "img")
        assert str(quick_run.resolve()) not in b.page_source  # no absolute path of this machine
