"""The search page's "series" switch in headless Chromium: an uploaded slice and a text
find series, shown with the best slice's thumbnail, the image count and the viewer link."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from service.app import create_app
from tests.series.conftest import SeriesCorpus
from tests.service.conftest import KEY, settings_for
from tests.service.live import serve
from tests.web.test_page import _cards, _enter_key, _shot, _thumbnails_loaded, _wait, browser

pytestmark = pytest.mark.slow
VIEWER = (
    "http://viewer.invalid/viewer?StudyInstanceUIDs={study_uid}&SeriesInstanceUIDs={series_uid}"
)
__all__ = ["browser"]  # the fixture


@pytest.fixture(scope="module")
def base_url(series_corpus: SeriesCorpus) -> Iterator[str]:
    settings = settings_for(series_corpus.index_dir, api_keys=[KEY], viewer_url_template=VIEWER)
    with serve(create_app(settings), headers={"Authorization": f"Bearer {KEY}"}) as base:
        yield base


def _series_mode(driver: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By

    _enter_key(driver, base_url)
    driver.find_element(By.CSS_SELECTOR, 'input[name="level"][value="series"]').click()


def test_an_uploaded_slice_finds_its_series(
    browser: Any, base_url: str, series_corpus: SeriesCorpus
) -> None:
    from selenium.webdriver.common.by import By

    uid, path = next(iter(series_corpus.held.items()))
    series = next(s for s in series_corpus.series if s.series_uid == uid)
    _series_mode(browser, base_url)
    browser.find_element(By.ID, "file").send_keys(str(path))
    _wait(browser, lambda d: "series like held.dcm" in d.find_element(By.ID, "status").text)
    first = _cards(browser)[0]
    assert first.get_attribute("data-series") == uid
    count = first.find_element(By.CSS_SELECTOR, ".source").text
    assert count == f"{len(series.paths)} images in series"
    viewer = first.find_element(By.CSS_SELECTOR, "a.viewer")
    assert viewer.get_attribute("href") == VIEWER.format(study_uid=series.study_uid, series_uid=uid)
    _wait(browser, _thumbnails_loaded)
    _shot(browser, "series-upload")


def test_text_and_series_like_this(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _series_mode(browser, base_url)
    browser.find_element(By.ID, "query").send_keys("ct chest", Keys.ENTER)
    _wait(browser, lambda d: len(_cards(d)) > 1)
    uids = [c.get_attribute("data-series") for c in _cards(browser)]
    assert len(set(uids)) == len(uids)
    second = _cards(browser)[1]
    clicked = second.get_attribute("data-series")
    second.find_element(By.CSS_SELECTOR, "button.more").click()
    _wait(browser, lambda d: f"like series {clicked}" in d.find_element(By.ID, "status").text)
    assert _cards(browser)[0].get_attribute("data-series") == clicked
    _wait(browser, _thumbnails_loaded)
    _shot(browser, "series-like-this")
