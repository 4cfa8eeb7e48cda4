"""The ranking page in a real browser: sign in, rank with the mouse and with keys, go back and
change a ranking, skip with the unsafe flag; a change made after a failed request is stored;
tap to rank at phone width; guidelines; the admin views. Rankings are checked in the store.
Completions, guidelines and comments holding markup must show as text and run nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

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
    token = store.add_annotator("ada", "demo")
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


def sign_in(page: Any, url: str, token: str, path: str = "/") -> None:
    page.goto(url + path, timeout=TIMEOUT_MS)
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")


def watch(page: Any) -> list[str]:
    """Collects script errors and dialogs: there must be none."""
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    return problems


@pytest.mark.timeout(120)
def test_a_ranking_changed_after_a_failed_request_is_stored(chromium: Any,
                                                           labeling: tuple[FeedbackStore, str, str]) -> None:
    """The lost-change case: a ranking is stored, the next /api/next fails, the annotator
    changes the ranking (and flag and comment) on the prompt still shown and submits: the change
    is stored, not answered "duplicate". And a submission whose answer is lost is sent again
    and stored once."""
    store, url, token = labeling
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = watch(page)
    fail = {"next": False, "lose_answer": 0}

    def next_route(route: Any) -> None:
        if fail["next"]:
            route.abort("connectionreset")  # a network blip, or the server restarting
        else:
            route.continue_()

    def rankings_route(route: Any) -> None:
        if fail["lose_answer"] > 0:
            fail["lose_answer"] -= 1
            route.fetch()  # the server gets it and stores it ...
            route.abort("connectionreset")  # ... and the answer never arrives
        else:
            route.continue_()

    page.route("**/api/next", next_route)
    page.route("**/api/rankings", rankings_route)
    try:
        sign_in(page, url, token)
        page.wait_for_selector("#prompt:has-text('Which one is a greeting?')")
        page.keyboard.press(label_of(page, "Hello there"))
        page.keyboard.press(label_of(page, SCRIPT))
        fail["next"] = True
        page.keyboard.press("Enter")
        page.wait_for_selector("#status:has-text('The next prompt did not load')")
        status = page.inner_text("#status")
        assert status.startswith("Saved.") and "the server could not be reached" in status
        assert "you can still change this ranking" in status and "TypeError" not in status
        assert page.is_visible("#retry-next")
        greeting = "Which one is a greeting?"
        assert ranking_by_text(store, greeting) == {"Hello there": 0, SCRIPT: 1, IMG: 2}

        # Change it on the prompt still shown: order, flag and comment.
        page.keyboard.press("Escape")
        page.keyboard.press(label_of(page, IMG))
        page.keyboard.press(label_of(page, "Hello there"))
        page.keyboard.press("u")
        page.fill("#comment", "the img one is safest")
        fail["next"] = False
        page.click("#submit")
        page.wait_for_selector("#prompt:has-text('Count to three.')")
        assert ranking_by_text(store, greeting) == {IMG: 0, "Hello there": 1, SCRIPT: 2}
        changed = store.get_ranking("ada", 1)
        assert changed.unsafe and changed.comment == "the img one is safest"

        # A lost answer: the page sends the same submission again and it is stored once.
        fail["lose_answer"] = 1
        page.keyboard.press(label_of(page, "1 2 3"))
        page.keyboard.press(label_of(page, "three"))
        page.keyboard.press("Enter")
        page.wait_for_selector("#prompt:has-text('Name a bird.')")
        assert page.inner_text("#status") == "Saved."
        assert ranking_by_text(store, "Count to three.") == {"1 2 3": 0, "three": 1, "one two three": 2}
        assert len(store.rankings("demo")) == 2
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM submissions")).scalar_one() == 3  # 2 + the change
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert problems == []
    finally:
        context.close()


@pytest.mark.timeout(120)
def test_tap_to_rank_at_phone_width_with_guidelines(chromium: Any, labeling: tuple[FeedbackStore, str, str]) -> None:
    store, url, token = labeling
    guidelines = "Better means <b>polite</b> & short.\nNo <script>window.__pwned=3</script> rewards."
    store.set_guidelines("demo", guidelines)
    context = chromium.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = watch(page)
    try:
        sign_in(page, url, token)
        page.wait_for_selector("#prompt:has-text('Which one is a greeting?')")
        assert page.inner_text("#guidelines-text") == guidelines  # markup shown as text
        assert page.locator("#guidelines b, #guidelines script").count() == 0
        # Nothing is wider than the phone: no sideways scrolling to reach a card or a button.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.is_disabled("#submit")
        assert page.inner_text("#submit-why") == (
            "Submit needs a full ranking: place 2 more (the last one left goes last by itself).")

        card(page, "#pool", "Hello there").tap()
        card(page, "#pool", "onerror").tap()
        assert page.locator("#ranked .card").count() == 2
        card(page, "#ranked", "Hello there").tap()  # a tap on a ranked card takes it out again
        assert page.locator("#ranked .card").count() == 1
        assert page.inner_text("#submit-why").startswith("Submit needs a full ranking: place 1 more")
        card(page, "#pool", "Hello there").tap()  # now below the <img> text
        assert page.is_enabled("#submit") and page.inner_text("#submit-why") == ""
        page.tap("#submit")
        page.wait_for_selector("#prompt:has-text('Count to three.')")
        assert ranking_by_text(store, "Which one is a greeting?") == {IMG: 0, "Hello there": 1, SCRIPT: 2}
        for completion in ("one two three", "1 2 3"):  # "three", left over, goes last
            card(page, "#pool", completion).tap()
        page.tap("#submit")
        page.wait_for_selector("#prompt:has-text('Name a bird.')")
        assert ranking_by_text(store, "Count to three.") == {"one two three": 0, "1 2 3": 1, "three": 2}
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert problems == []
    finally:
        context.close()


@pytest.mark.timeout(120)
def test_the_admin_views(chromium: Any, tmp_path: Path) -> None:
    """Two annotators rank prompt 1 (a comment with markup, an unsafe flag); the admin page lists
    only the project's members, the rounds, every ranked prompt, and one prompt's rankings."""
    store = FeedbackStore.open(tmp_path / "feedback.db")
    store.create_project("demo", 3)
    store.add_prompts("demo", list(PROMPTS)[:2], list(PROMPTS.values())[:2])
    store.create_project("other", 2)
    root = store.add_annotator("root", "demo", "admin")
    ada_token = store.add_annotator("ada", "demo")
    store.add_annotator("bob", "demo")
    store.add_annotator("eve", "other")  # works elsewhere: not shown
    comment = '<img src=x onerror="window.__pwned=4"> too formal'
    for name, unsafe, note in (("ada", False, None), ("bob", True, comment)):
        view = store.next_prompt("demo", name, 2)
        order = [c.id for c in view.completions]
        store.submit_ranking(name, view.id, order=order if name == "ada" else order[::-1], unsafe=unsafe,
                             comment=note, annotators_per_prompt=2)
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = watch(page)
    try:
        with serve_in_background(create_app(store, "demo", annotators_per_prompt=2)) as url:
            sign_in(page, url, ada_token, "/admin")
            page.wait_for_selector("#admin-summary:has-text('needs an admin of project')")
            page.click("#signout")
            sign_in(page, url, root, "/admin")
            page.wait_for_selector("#prompts-table tbody tr")
            members = page.locator("#progress-table tbody tr td:first-child").all_inner_texts()
            assert members == ["ada", "bob", "root"]
            assert page.locator("#rounds-table tbody tr").all_inner_texts()[0].split() == ["1", "2", "2", "2", "1"]
            row = page.locator("#prompts-table tbody tr").first.locator("td").all_inner_texts()
            # Round 1, #1, its text, 2 rankings, 0 skips, 1 unsafe, 1 comment, reversed orders: disagreement 1.
            assert row[:8] == ["1", "1", "Which one is a greeting?", "2", "0", "1", "1", "1.000"]
            page.locator("#prompts-table tbody tr").first.locator("button").click()
            page.wait_for_selector("#admin-prompt:not([hidden])")
            assert page.inner_text("#admin-prompt-text") == "Which one is a greeting?"
            assert page.locator("#admin-completions li").all_inner_texts() == [SCRIPT, IMG, "Hello there"]
            cells = [r.split("\t") for r in page.locator("#admin-rankings tbody tr").all_inner_texts()]
            assert cells[0][:4] == ["ada", "1", "2", "3"] and cells[1][:4] == ["bob", "3", "2", "1"]
            assert cells[1][-2:] == ["yes", comment]  # unsafe, and the comment as text
            assert page.locator("#admin-view img, #admin-view script").count() == 0
            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert problems == []
    finally:
        context.close()
        store.close()


CRITERIA = {"helpful": "Answers what was asked", "harmless": "Says nothing unsafe"}


@pytest.mark.timeout(150)
def test_two_criteria_by_keyboard_and_by_touch(chromium: Any, tmp_path: Path) -> None:
    """A project ranked by helpful and harmless: the keyboard (Enter moves on to the next
    criterion, `=` copies the previous one, Shift ties), going back shows both criteria, then
    taps at phone width; the export holds exactly the ranks entered, per criterion."""
    store = FeedbackStore.open(tmp_path / "feedback.db")
    store.create_project("demo", 3, criteria=CRITERIA)
    store.add_prompts("demo", list(PROMPTS), list(PROMPTS.values()))
    token = store.add_annotator("ada", "demo", "admin")
    greeting, count, bird = PROMPTS
    context = chromium.new_context()
    phone = chromium.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        with serve_in_background(create_app(store, "demo", annotators_per_prompt=1)) as url:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            problems = watch(page)
            sign_in(page, url, token)
            page.wait_for_selector(f"#prompt:has-text('{greeting}')")
            sections = page.locator("#criteria .criterion")
            assert sections.count() == 2
            assert sections.nth(1).locator(".desc").inner_text() == "Says nothing unsafe"
            assert "active" in (sections.nth(0).get_attribute("class") or "")

            # 1. helpful by keys, Enter moves on to harmless, `=` copies helpful, Enter submits.
            page.keyboard.press(label_of(page, "Hello there"))
            page.keyboard.press(label_of(page, IMG))
            page.keyboard.press("Enter")
            assert "active" in (sections.nth(1).get_attribute("class") or "")
            assert page.inner_text("#submit-why") == (
                "Submit needs a ranking by harmless: place 2 more (the last one left goes last by itself).")
            page.keyboard.press("=")
            assert page.locator("#ranked .card").count() == 2 and page.inner_text("#submit-why") == ""
            page.keyboard.press("Enter")
            page.wait_for_selector(f"#prompt:has-text('{count}')")

            # 2. Different rankings per criterion; harmless with a tie (Shift).
            page.keyboard.press(label_of(page, "1 2 3"))
            page.keyboard.press(label_of(page, "three"))
            page.keyboard.press("Enter")
            page.keyboard.press(label_of(page, "one two three"))
            page.keyboard.press("Shift+" + label_of(page, "three"))
            page.keyboard.press("Enter")
            page.wait_for_selector(f"#prompt:has-text('{bird}')")

            # 3. Back: both criteria come back; change harmless only.
            page.keyboard.press("b")
            page.wait_for_selector(f"#prompt:has-text('{count}')")
            assert page.locator("#ranked .card").count() == 3  # helpful, the active one
            assert sections.nth(1).locator(".summary").inner_text().startswith("ranked: ")
            assert " = " in sections.nth(1).locator(".summary").inner_text()
            sections.nth(1).locator("h3 button").click()
            page.keyboard.press("Escape")  # clears harmless only
            page.keyboard.press(label_of(page, "1 2 3"))
            page.keyboard.press("Enter")  # 2 left: refused, naming the criterion
            assert page.inner_text("#status") == "Rank the completions by harmless first: 2 are not ranked yet."
            page.keyboard.press(label_of(page, "three"))
            page.keyboard.press("Enter")
            page.wait_for_selector(f"#prompt:has-text('{bird}')")
            assert problems == []

            # 4. Taps at phone width: the third tap of helpful moves on to harmless by itself.
            mobile = phone.new_page()
            mobile.set_default_timeout(TIMEOUT_MS)
            problems = watch(mobile)
            sign_in(mobile, url, token)
            mobile.wait_for_selector(f"#prompt:has-text('{bird}')")
            assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
            for completion in ("robin", "crow", "owl"):
                card(mobile, "#pool", completion).tap()
            assert "active" in (mobile.locator("#criteria .criterion").nth(1).get_attribute("class") or "")
            assert mobile.is_disabled("#submit")
            for completion in ("owl", "crow"):  # robin, left over, goes last
                card(mobile, "#pool", completion).tap()
            mobile.tap("#submit")
            mobile.wait_for_selector("#done-view:not([hidden])")

            # The admin page counts each criterion.
            mobile.goto(url + "/admin")
            mobile.wait_for_selector("#criteria-table tbody tr")
            rows = [r.split("\t")[:3] for r in mobile.locator("#criteria-table tbody tr").all_inner_texts()]
            assert rows == [["helpful", "3", "3"], ["harmless", "3", "3"]]
            mobile.locator("#prompts-table tbody tr").first.locator("button").click()
            mobile.wait_for_selector("#admin-prompt:not([hidden])")
            # Stored order <script>, <img>, Hello: places 3, 2, 1 by both criteria.
            cells = [r.split("\t")[:5] for r in mobile.locator("#admin-rankings tbody tr").all_inner_texts()]
            assert cells == [["ada", "helpful", "3", "2", "1"], ["ada", "harmless", "3", "2", "1"]]
            assert problems == []

        entered = {
            greeting: {"helpful": {"Hello there": 0, IMG: 1, SCRIPT: 2},
                       "harmless": {"Hello there": 0, IMG: 1, SCRIPT: 2}},
            count: {"helpful": {"1 2 3": 0, "three": 1, "one two three": 2},
                    "harmless": {"1 2 3": 0, "three": 1, "one two three": 2}},
            bird: {"helpful": {"robin": 0, "crow": 1, "owl": 2}, "harmless": {"owl": 0, "crow": 1, "robin": 2}},
        }
        exported = {row["prompt"]: {c: dict(zip(row["completions"], ranks, strict=True))
                                    for c, ranks in row["rankings"].items()}
                    for row in store.export_rows("demo", "annotations")}
        assert exported == entered
        # Pairwise rows carry their criterion: 3 strict pairs per prompt and criterion.
        pairs = store.export_rows("demo", "pairwise", "all", drop_flagged=False)
        assert sorted({r["criterion"] for r in pairs}) == ["harmless", "helpful"]
        assert all(sum(r["criterion"] == c and r["prompt"] == p for r in pairs) == 3 for p in entered for c in CRITERIA)
    finally:
        context.close()
        phone.close()
        store.close()
