"""The search page in a real headless Chromium (Selenium + Debian's chromium-driver):
type a query, upload (and drop) an indexed DICOM and see it first, filter, follow "more
like this", open the viewer link, use the keyboard, see an error for a wrong key.
Screenshots go to tests/artifacts/web/."""

from __future__ import annotations

import base64
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from indexer.pipeline.runner import BuildReport
from service.app import create_app
from tests.service.conftest import KEY, settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver")
ARTIFACTS = Path(__file__).parents[1] / "artifacts" / "web"
WAIT_S = 30
VIEWER = "http://viewer.invalid/viewer?StudyInstanceUIDs={study_uid}"


@pytest.fixture(scope="module")
def base_url(built_index: tuple[Path, BuildReport]) -> Iterator[str]:
    app = create_app(settings_for(built_index[0], api_keys=[KEY], viewer_url_template=VIEWER))
    with serve(app, headers={"Authorization": f"Bearer {KEY}"}) as base:
        yield base


@pytest.fixture()
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium and chromium-driver (Debian) are not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition)


def _shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _enter_key(driver: Any, base_url: str, key: str = KEY) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


def _cards(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, "#results .card"))


def _thumbnails_loaded(driver: Any) -> bool:
    return bool(
        driver.execute_script(
            "const imgs = [...document.querySelectorAll('#results .card img')];"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
        )
    )


def test_text_query_shows_results_with_thumbnails(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _enter_key(browser, base_url)
    query = browser.find_element(By.ID, "query")
    query.send_keys("x-ray chest anteroposterior", Keys.ENTER)
    _wait(browser, lambda d: len(_cards(d)) > 0)
    _wait(browser, _thumbnails_loaded)
    assert "results" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.CSS_SELECTOR, "#results .card .score").text.startswith("score")
    _shot(browser, "text-search")


def _first_is_itself(browser: Any, name: str) -> Any:
    """The first result card is the uploaded file itself, with score 1.000."""
    from selenium.webdriver.common.by import By

    first = _cards(browser)[0]
    source = first.find_element(By.CSS_SELECTOR, ".source").get_attribute("title")
    assert source.endswith("/" + name), source
    assert first.find_element(By.CSS_SELECTOR, ".score").text == "score 1.000"
    return first


def test_upload_of_an_indexed_dicom_finds_it_first(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By

    _enter_key(browser, base_url)
    path = get_testdata_file("MR_small.dcm")
    assert path is not None
    browser.find_element(By.ID, "file").send_keys(path)
    _wait(browser, lambda d: len(_cards(d)) > 0)
    first = _first_is_itself(browser, "MR_small.dcm")
    viewer = first.find_element(By.CSS_SELECTOR, "a.viewer")
    study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    assert viewer.is_displayed()
    assert viewer.get_attribute("href") == VIEWER.format(study_uid=study)
    _wait(browser, _thumbnails_loaded)
    _shot(browser, "image-upload")


def test_dropping_a_file_searches_with_it(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By

    _enter_key(browser, base_url)
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data = base64.b64encode(Path(path).read_bytes()).decode()
    browser.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File([bytes], 'CT_small.dcm'));"
        "document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop',"
        " {dataTransfer: transfer, bubbles: true, cancelable: true}));",
        data,
    )
    _wait(browser, lambda d: "like CT_small.dcm" in d.find_element(By.ID, "status").text)
    _first_is_itself(browser, "CT_small.dcm")


def test_filters_narrow_the_results(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _enter_key(browser, base_url)
    browser.find_element(By.ID, "f-modality").send_keys("mr")
    browser.find_element(By.ID, "query").send_keys("mr brain", Keys.ENTER)
    _wait(browser, lambda d: "results for" in d.find_element(By.ID, "status").text)
    kinds = [c.find_element(By.CSS_SELECTOR, ".what").text for c in _cards(browser)]
    assert kinds and all(kind.startswith("MR") for kind in kinds), kinds
    _shot(browser, "filters")


def test_more_like_this(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _enter_key(browser, base_url)
    browser.find_element(By.ID, "query").send_keys("mr brain", Keys.ENTER)
    _wait(browser, lambda d: len(_cards(d)) > 1)
    card = _cards(browser)[1]
    clicked = card.get_attribute("data-id")
    card.find_element(By.CSS_SELECTOR, "button.more").click()
    _wait(browser, lambda d: f"like item {clicked}" in d.find_element(By.ID, "status").text)
    ids = [c.get_attribute("data-id") for c in _cards(browser)]
    assert ids and clicked not in ids
    _wait(browser, _thumbnails_loaded)
    _shot(browser, "more-like-this")


def test_keyboard_reaches_search_button_and_results(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _enter_key(browser, base_url)
    query = browser.find_element(By.ID, "query")
    query.send_keys("ct abdomen", Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "search-button"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    _wait(browser, lambda d: len(_cards(d)) > 0)
    active = browser.switch_to.active_element
    visited = []
    for _ in range(30):  # drop zone, filters (a date input has 3 stops), then the cards
        active.send_keys(Keys.TAB)
        active = browser.switch_to.active_element
        visited.append(
            active.get_attribute("id") or active.get_attribute("class") or active.tag_name
        )
        if "more" in (active.get_attribute("class") or ""):
            break
    assert "more" in (active.get_attribute("class") or ""), visited
    _shot(browser, "keyboard")


def test_wrong_key_shows_the_error(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _enter_key(browser, base_url, key="wrong-key-wrong-key")
    browser.find_element(By.ID, "query").send_keys("ct", Keys.ENTER)
    _wait(browser, lambda d: "unauthorized" in d.find_element(By.ID, "status").text)
    status = browser.find_element(By.ID, "status")
    assert "error" in (status.get_attribute("class") or "")
    assert not _cards(browser)
    _shot(browser, "wrong-key")


def test_load_more_and_the_min_score_slider(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _enter_key(browser, base_url)
    size = browser.find_element(By.ID, "f-k")
    size.clear()
    size.send_keys("5")
    browser.find_element(By.ID, "query").send_keys("ct chest", Keys.ENTER)
    _wait(browser, lambda d: len(_cards(d)) == 5)
    more = browser.find_element(By.ID, "load-more")
    _wait(browser, lambda d: more.is_displayed())
    first_page = [c.get_attribute("data-id") for c in _cards(browser)]
    more.click()
    _wait(browser, lambda d: len(_cards(d)) == 10)
    ids = [c.get_attribute("data-id") for c in _cards(browser)]
    assert ids[:5] == first_page and len(set(ids)) == 10
    _wait(browser, _thumbnails_loaded)
    _shot(browser, "load-more")

    def scores() -> list[float]:
        return [
            float(c.find_element(By.CSS_SELECTOR, ".score").text.split()[1])
            for c in _cards(browser)
        ]

    threshold = math.floor(scores()[2] * 100) / 100  # the third result passes, the tenth may not
    browser.execute_script(
        "const s = document.getElementById('f-min-score'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        str(threshold),
    )
    assert browser.find_element(By.ID, "f-min-score-value").text == f"{threshold:.2f}"
    browser.find_element(By.ID, "search-button").click()
    _wait(browser, lambda d: "Searching" not in d.find_element(By.ID, "status").text)
    _wait(browser, lambda d: "results for" in d.find_element(By.ID, "status").text)
    kept = scores()
    assert len(kept) >= 3 and all(score >= threshold for score in kept), (threshold, kept)


def test_a_withheld_thumbnail_shows_the_reason(browser: Any, base_url: str) -> None:
    """Secondary captures (pydicom's SC_rgb*.dcm, modality OT) have no known text region:
    under the default policy the card says why instead of showing the image."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _enter_key(browser, base_url)
    browser.find_element(By.ID, "f-modality").send_keys("ot")
    browser.find_element(By.ID, "query").send_keys("screenshot", Keys.ENTER)
    _wait(browser, lambda d: len(_cards(d)) > 0)
    notes = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .withheld"))
    assert "No thumbnail: " in notes[0].text and "no known text region" in notes[0].text
    assert not notes[0].find_element(By.XPATH, "preceding-sibling::img").is_displayed()
    _shot(browser, "withheld")
