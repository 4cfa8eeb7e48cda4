"""The ranking page in a real browser: sign in, rank with the mouse and with keys, go back and
change a ranking, skip with the unsafe flag; rankings are checked in the store. Completions
holding markup must show as text and run nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlhfkit.feedback.app import create_app, serve_in_background
from rlhfkit.feedback.store import FeedbackStore

pytestmark = pytest.mark.browser

SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=2">'
PROMPTS = {
    "Which one is a greeting?": [SCRIPT, IMG, "Hello there"],
    "Count to three.": ["one two three", "1 2 3", "three"],
    "Name a bird.": ["robin", "crow", "owl"],
}
TIMEOUT_MS = 10_000


@pytest.fixture
def labeling(tmp_path: Path) -> Iterator[tuple[FeedbackStore, str, str]]:
    store = FeedbackStore.open(tmp_path / "feedback.db")
    store.create_project("demo", 3)
    store.add_prompts("demo", list(PROMPTS), list(PROMPTS.values()))
    token = store.add_annotator("ada")
    with serve_in_background(create_app(store, "demo", annotators_per_prompt=1)) as url:
        yield store, url, token
    store.close()


def ranking_by_text(store: FeedbackStore, prompt: str) -> dict[str, int] | None:
    """ada's ranks of a prompt's completions, keyed by completion text (None: not ranked)."""
    view = next(v for v in (store.prompt(pid, "ada") for pid in (1, 2, 3)) if v.text == prompt)
    if view.ranking is None:
        return None
    text = {c.id: c.text for c in view.completions}
    return {text[cid]: rank for cid, rank in view.ranking.ranks.items()}


def label_of(page: Any, completion: str) -> str:
    """The number key of a completion card (the page shuffles them per annotator)."""
    cards = page.locator(".card")
    for i in range(cards.count()):
        if cards.nth(i).locator("pre.text").inner_text() == completion:
            return cards.nth(i).locator(".label").inner_text()
    raise AssertionError(f"no card shows {completion!r}")


def card(page: Any, zone: str, completion: str) -> Any:
    return page.locator(f"{zone} .card").filter(has=page.locator("pre.text", has_text=completion))


@pytest.mark.timeout(120)
def test_ranking_in_the_browser(chromium: Any, labeling: tuple[FeedbackStore, str, str]) -> None:
    store, url, token = labeling
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url, timeout=TIMEOUT_MS)
        page.fill("#token", token)
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("#prompt:has-text('Which one is a greeting?')")

        # Markup in completions shows as the literal text and runs nothing.
        shown = page.inner_text("#pool")
        assert SCRIPT in shown and IMG in shown
        assert page.locator("#pool img").count() == 0 and page.locator("#pool script").count() == 0

        # 1. With the mouse: drag "Hello there" into the ranking, then the <img> text below it.
        card(page, "#pool", "Hello there").drag_to(page.locator("#end"))
        card(page, "#pool", "onerror").drag_to(page.locator("#end"))
        assert page.locator("#ranked .card").count() == 2
        page.click("#submit")  # the <script> text, left unranked, goes last
        page.wait_for_selector("#prompt:has-text('Count to three.')")
        assert ranking_by_text(store, "Which one is a greeting?") == {"Hello there": 0, IMG: 1, SCRIPT: 2}

        # 2. With keys: "1 2 3" first, "three" second, Enter (the last one goes last).
        page.keyboard.press(label_of(page, "1 2 3"))
        page.keyboard.press(label_of(page, "three"))
        page.keyboard.press("Enter")
        page.wait_for_selector("#prompt:has-text('Name a bird.')")
        assert ranking_by_text(store, "Count to three.") == {"1 2 3": 0, "three": 1, "one two three": 2}
        first_ranking = store.get_ranking("ada", 2)

        # 3. Back to the previous prompt, shown with its ranking; change it.
        page.keyboard.press("b")
        page.wait_for_selector("#prompt:has-text('Count to three.')")
        assert page.is_visible("#editing")
        assert page.locator("#ranked .card").count() == 3
        page.keyboard.press("Escape")  # clear
        page.keyboard.press(label_of(page, "one two three"))
        page.keyboard.press(label_of(page, "three"))
        page.keyboard.press("Enter")
        page.wait_for_selector("#prompt:has-text('Name a bird.')")
        assert ranking_by_text(store, "Count to three.") == {"one two three": 0, "three": 1, "1 2 3": 2}
        changed = store.get_ranking("ada", 2)
        assert changed.id == first_ranking.id and changed.created_at == first_ranking.created_at

        # 4. Flag the last prompt unsafe and skip it.
        page.keyboard.press("u")
        assert page.is_checked("#unsafe")
        page.keyboard.press("s")
        page.wait_for_selector("#done-view:not([hidden])")
        assert page.inner_text("#progress") == "3 done \u00b7 0 left"
        bird = store.prompt(3, "ada").ranking
        assert bird is not None and bird.skip and bird.unsafe
        assert len(store.rankings("demo")) == 3

        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert dialogs == [] and errors == []
    finally:
        context.close()
