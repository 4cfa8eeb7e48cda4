"""`rlhfkit feedback ...` through typer's CliRunner (the sub-app, as `rlhfkit` mounts it)."""

from __future__ import annotations

import inspect
import json
import math
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import typer
from typer.testing import CliRunner

from rlhfkit.data.preferences import load_examples, load_preferences
from rlhfkit.feedback.cli import feedback_app
from rlhfkit.feedback.store import FeedbackStore

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(feedback_app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(args: list[str], fragment: str) -> None:
    code, out, err = run(*args)
    assert code == 2, (args, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    assert fragment in lines[0], (args, lines[0])


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# What every exported row also says: its criterion, and about its prompt.
NOTES = {"criterion": "overall", "round": 1, "unsafe": False, "comments": []}
PROMPTS = [
    {"prompt": "Name a colour.", "completions": ["red", "blue", "green"]},
    {"prompt": "Name a fruit.", "completions": ["apple", "pear", "plum"]},
]


def test_import_add_annotator_rank_export_and_status(tmp_path: Path) -> None:
    db = str(tmp_path / "feedback.db")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    code, out, err = run("import", prompts, "--db", db, "--project", "demo", "--k", "3", "--model", "gpt2",
                         "--sampling", '{"temperature": 0.9}')
    assert code == 0, err
    assert "imported 2 prompts with 3 completions each into project 'demo'" in out

    code, out, err = run("add-annotator", "ada", "--db", db, "--project", "demo")
    assert code == 0 and "shown only now" in err
    token = out.strip()
    assert len(out.splitlines()) == 1 and len(token) >= 32  # only the token on stdout: easy to pipe
    assert run("add-annotator", "root", "--db", db, "--project", "demo", "--admin")[0] == 0

    with FeedbackStore.open(db) as store:
        assert store.annotator_for_token(token, "demo").name == "ada"
        view = store.prompt(1)
        assert (view.completions[0].model, view.completions[0].sampling) == ("gpt2", {"temperature": 0.9})
        by_text = {c.text: c.id for p in (1, 2) for c in store.prompt(p).completions}
        store.submit_ranking("ada", 1, order=[by_text["blue"], by_text["red"], by_text["green"]])
        store.submit_ranking("root", 1, order=[by_text["blue"], by_text["green"], by_text["red"]])
        store.submit_ranking("ada", 2, {by_text["apple"]: 0, by_text["pear"]: 1, by_text["plum"]: 1},
                             comment="pear and plum: a tie")

    out_file = tmp_path / "out" / "pairs.jsonl"
    code, out, err = run("export", "--db", db, "--project", "demo", "--out", out_file)
    assert code == 0, err
    fruit = NOTES | {"comments": [{"annotator": "ada", "comment": "pear and plum: a tie"}]}
    # Colour, mean places: blue 0, red (1+2)/2 = 1.5, green (2+1)/2 = 1.5 -> blue > red = green.
    # Fruit: ada only, apple > pear = plum.
    assert [json.loads(line) for line in out_file.read_text().splitlines()] == [
        {"prompt": "Name a colour.", "chosen": "blue", "rejected": "red", **NOTES},
        {"prompt": "Name a colour.", "chosen": "blue", "rejected": "green", **NOTES},
        {"prompt": "Name a fruit.", "chosen": "apple", "rejected": "pear", **fruit},
        {"prompt": "Name a fruit.", "chosen": "apple", "rejected": "plum", **fruit},
    ]
    assert "wrote 4 pairwise rows (majority)" in out

    ranked = tmp_path / "ranked.jsonl"
    code, out, err = run("export", "--db", db, "--project", "demo", "--format", "ranked", "--merge", "all",
                         "--out", ranked)
    assert code == 0, err
    assert [json.loads(line) for line in ranked.read_text().splitlines()] == [
        {"prompt": "Name a colour.", "completions": ["blue", "red", "green"], "annotator": "ada", **NOTES},
        {"prompt": "Name a colour.", "completions": ["blue", "green", "red"], "annotator": "root", **NOTES},
        {"prompt": "Name a fruit.", "completions": ["apple", "pear", "plum"], "ranks": [0, 1, 1], "annotator": "ada",
         **fruit},
    ]

    code, out, err = run("status", "--db", db, "--project", "demo", "--annotators-per-prompt", "2")
    assert code == 0, err
    assert "2 prompts, 2 with all completions, 3 rankings, 1 prompts ranked by 2 or more" in " ".join(out.split())
    assert "ada" in out and "root" in out
    assert "Newest comments (1)" in out and "pear and plum: a tie" in out
    # ada vs root on the colour prompt: (b,r) agree, (b,g) agree, (r,g) disagree -> 2/3, tau 1/3.
    assert "0.667" in out and "0.333" in out


def test_import_prompts_without_completions(tmp_path: Path) -> None:
    db = str(tmp_path / "feedback.db")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    code, out, _ = run("import", prompts, "--db", db, "--project", "demo", "--k", "4")
    assert code == 0 and "imported 2 prompts (no completions yet)" in out
    more = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "three", "completions": ["a", "b", "c", "d"]}])
    code, out, err = run("import", more, "--db", db, "--project", "demo")  # k comes from the project
    assert code == 0, err
    with FeedbackStore.open(db) as store:
        assert [len(store.prompt(i).completions) for i in (1, 2, 3)] == [0, 0, 4]


def test_bad_input_gives_one_line_naming_the_row_and_field(tmp_path: Path) -> None:
    db = str(tmp_path / "feedback.db")
    good = write_jsonl(tmp_path / "good.jsonl", PROMPTS)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    cases = [
        ([empty, "--k", "3"], "empty.jsonl: no prompts (the file is empty)"),
        ([good, "--k", "1"], "--k: must be from 2 to 9"),
        ([good, "--k", "10"], "--k: must be from 2 to 9"),
        ([good], "project 'demo' does not exist yet; give --k"),
        ([tmp_path / "missing.jsonl", "--k", "3"], "missing.jsonl: file not found"),
        ([good, "--k", "3", "--sampling", "{temp"], "--sampling: not valid JSON"),
        ([write_jsonl(tmp_path / "a.jsonl", [PROMPTS[0], "just text"]), "--k", "3"],
         "a.jsonl, row 2: expected a JSON object"),
        ([write_jsonl(tmp_path / "b.jsonl", [{"prompt": "x", "completions": ["1", "2"]}]), "--k", "3"],
         "b.jsonl, row 1, field 'completions': 2 given; the project takes exactly k=3"),
        ([write_jsonl(tmp_path / "c.jsonl", [{"prompt": "x", "completion": ["1", "2", "3"]}]), "--k", "3"],
         "c.jsonl, row 1, field 'completion': unknown field"),
        ([write_jsonl(tmp_path / "d.jsonl", [PROMPTS[0], {"prompt": "y"}]), "--k", "3"],
         "d.jsonl, row 2, field 'completions': missing, but row 1 has them"),
        ([write_jsonl(tmp_path / "e.jsonl", [PROMPTS[0], PROMPTS[0]]), "--k", "3"],
         "e.jsonl, row 2, field 'prompt': the same prompt as row 1"),
        ([write_jsonl(tmp_path / "f.jsonl", [{"prompt": "  "}]), "--k", "3"],
         "f.jsonl, row 1, field 'prompt': must be non-empty text"),
    ]
    (tmp_path / "g.jsonl").write_text('{"prompt": "fine"}\n{"prompt": \n')
    cases.append(([tmp_path / "g.jsonl", "--k", "3"], "g.jsonl, row 2: not valid JSON"))
    for args, fragment in cases:
        one_line_error(["import", *args, "--db", db, "--project", "demo"], fragment)
    with FeedbackStore.open(db) as store:
        assert store.projects() == []  # a refused import leaves nothing behind, not even the project

    assert run("import", good, "--db", db, "--project", "demo", "--k", "3")[0] == 0
    one_line_error(["import", good, "--db", db, "--project", "demo"], "row 1: prompt already in project 'demo'")
    one_line_error(["import", good, "--db", db, "--project", "demo", "--k", "4"], "has k=3; --k 4 does not match")
    assert run("add-annotator", "ada", "--db", db)[0] == 0
    one_line_error(["add-annotator", "ada", "--db", db], "annotator 'ada' already exists")
    for command in (["status"], ["export", "--out", tmp_path / "x.jsonl"], ["serve"]):
        one_line_error([*command, "--db", db, "--project", "nope"], "project 'nope' not found (known projects: demo)")


def test_database_errors_are_one_line_and_fast(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    closed = f"postgresql://ann:secret@127.0.0.1:{port}/labels"
    for command in (["status", "--project", "demo"], ["add-annotator", "ada"],
                    ["export", "--project", "demo", "--out", tmp_path / "x.jsonl"]):
        start = time.monotonic()
        one_line_error([*command, "--db", closed], f"cannot open database postgresql+psycopg://ann:***@127.0.0.1:{port}")
        assert time.monotonic() - start < 10
    one_line_error(["status", "--project", "demo", "--db", "mysql://u@h/db"], "'mysql' is not supported")
    one_line_error(["status", "--project", "demo", "--db", str(tmp_path / "nowhere" / "f.db")], "does not exist")


def test_export_rows_have_the_columns_the_reward_data_reader_expects(tmp_path: Path) -> None:
    """pairwise: prompt/chosen/rejected, all strings; ranked: prompt (str), completions
    (strings, K of them), ranks (ints from 0, best first) only with ties; `all` adds annotator;
    every row adds round (int), unsafe (bool) and comments (a list), which the reader ignores."""
    db = str(tmp_path / "feedback.db")
    rows = [{"prompt": f"prompt {i}", "completions": [f"c{i}-{j}" for j in range(4)]} for i in range(3)]
    assert run("import", write_jsonl(tmp_path / "p.jsonl", rows), "--db", db, "--project", "demo", "--k", "4")[0] == 0
    with FeedbackStore.open(db) as store:
        for name in ("ann", "bob"):
            store.add_annotator(name)
        for pid in (1, 2, 3):
            ids = [c.id for c in store.prompt(pid).completions]
            store.submit_ranking("ann", pid, order=ids)
            store.submit_ranking("bob", pid, dict(zip(ids, [1, 0, 1, 2])))  # a tie

    exported = {}
    for fmt in ("pairwise", "ranked"):
        for merge in ("majority", "all"):
            out = tmp_path / f"{fmt}-{merge}.jsonl"
            code, _, err = run("export", "--db", db, "-p", "demo", "--format", fmt, "--merge", merge, "--out", out)
            assert code == 0, err
            exported[fmt, merge] = [json.loads(line) for line in out.read_text().splitlines()]
            assert exported[fmt, merge], (fmt, merge)

    for merge in ("majority", "all"):
        extra = {"annotator"} if merge == "all" else set()
        for row in exported[("pairwise", merge)] + exported[("ranked", merge)]:
            assert (row.pop("criterion"), row.pop("round"), row.pop("unsafe"), row.pop("comments")) == (
                "overall", 1, False, [])
        for row in exported["pairwise", merge]:
            assert set(row) == {"prompt", "chosen", "rejected"} | extra
            assert all(isinstance(row[k], str) and row[k] for k in row)
            assert row["chosen"] != row["rejected"]
        for row in exported["ranked", merge]:
            assert set(row) - {"ranks"} == {"prompt", "completions"} | extra
            assert isinstance(row["prompt"], str)
            assert len(row["completions"]) == 4 and all(isinstance(c, str) for c in row["completions"])
            if "ranks" in row:
                r = row["ranks"]
                assert all(type(x) is int for x in r) and r == sorted(r) and r[0] == 0 and len(set(r)) < len(r)

    # And the reward stage's own reader turns every file into exactly the comparisons submitted.
    # ann ranked c0 > c1 > c2 > c3; bob c1 > c0 = c2 > c3 (the tie c0, c2 is no comparison).
    # majority, mean fractional places: c0 (0 + 1.5)/2 = 0.75, c1 (1 + 0)/2 = 0.5,
    # c2 (2 + 1.5)/2 = 1.75, c3 (3 + 3)/2 = 3, so c1 > c0 > c2 > c3.
    def beats(ranks: list[int]) -> list[tuple[int, int]]:
        """(better, worse) completion indices for every pair ranked strictly apart."""
        return [(a, b) for a in range(4) for b in range(4) if ranks[a] < ranks[b]]

    ann, bob, merged = [0, 1, 2, 3], [1, 0, 1, 2], [1, 0, 2, 3]
    expected = {
        merge: Counter((f"prompt {i}", f"c{i}-{a}", f"c{i}-{b}") for i in range(3) for a, b in pairs)
        for merge, pairs in (("majority", beats(merged)), ("all", beats(ann) + beats(bob)))
    }
    assert sum(expected["majority"].values()) == 3 * 6 and sum(expected["all"].values()) == 3 * (6 + 5)
    for (fmt, merge), file_rows in exported.items():
        path = tmp_path / f"{fmt}-{merge}.jsonl"
        assert len(load_examples(path)) == len(file_rows)
        pairs = load_preferences(path)
        assert Counter((p.prompt, p.chosen, p.rejected) for p in pairs) == expected[merge], (fmt, merge)
        assert math.isclose(sum(p.weight for p in pairs), len(file_rows))  # each row counts once in the loss


def test_every_command_has_help() -> None:
    commands = feedback_app.registered_commands
    names = [c.name for c in commands]
    assert None not in names and len(set(names)) == len(names)  # each registered under its own name
    assert {"import", "sample", "add-annotator", "serve", "export", "status"} <= set(names)
    summaries = {c.name: inspect.getdoc(c.callback).splitlines()[0] for c in commands}

    code, out, err = run("--help")
    assert code == 0, err
    assert all(listed(name, out) for name in names), out
    for name in names:
        code, out, err = run(name, "--help")
        assert code == 0, (name, err)
        flat = " ".join(out.split())
        assert re.search(rf"Usage: \S+ {re.escape(name)} ", flat), (name, flat)
        assert summaries[name] in flat, (name, flat)
        assert not [other for other, text in summaries.items() if other != name and text in flat], (name, flat)


def listed(name: str, help_text: str) -> bool:
    """`name` starts a line of a help page's command list (plain or drawn in a rich panel)."""
    return re.search(rf"^[\s│]*{re.escape(name)}\s", help_text, re.MULTILINE) is not None


def test_mounts_under_the_main_command_line(tmp_path: Path) -> None:
    from rlhfkit.cli import app

    result = runner.invoke(app, ["feedback", "--help"])
    assert result.exit_code == 0, result.output
    for command in feedback_app.registered_commands:
        assert listed(command.name, result.stdout), (command.name, result.stdout)

    db = str(tmp_path / "feedback.db")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    result = runner.invoke(app, ["feedback", "import", str(prompts), "--db", db, "--project", "demo", "--k", "3"])
    assert result.exit_code == 0, result.output
    assert "imported 2 prompts with 3 completions each into project 'demo'" in result.stdout
    result = runner.invoke(app, ["feedback", "add-annotator", "ada", "--db", db])
    assert result.exit_code == 0, result.output
    with FeedbackStore.open(db) as store:
        assert store.annotator_for_token(result.stdout.strip()).name == "ada"
        assert [c.text for c in store.prompt(1).completions] == ["red", "blue", "green"]

    result = runner.invoke(app, ["feedback", "status", "--db", db, "--project", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: project 'nope' not found (known projects: demo)"


def test_one_line_errors_reports_database_failures_and_lets_bugs_through() -> None:
    from sqlalchemy.exc import OperationalError

    from rlhfkit.cli_errors import one_line_errors

    app = typer.Typer()

    @app.command()
    @one_line_errors
    def fail(kind: str) -> None:
        if kind == "database":
            raise OperationalError("SELECT 1", {}, Exception("disk I/O error\nmore detail"))
        raise KeyError(kind)

    result = runner.invoke(app, ["database"])
    assert (result.exit_code, result.stderr) == (2, "error: database: disk I/O error\n")
    result = runner.invoke(app, ["bug"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)  # a bug keeps its traceback


def test_the_error_decorator_does_not_load_sqlalchemy() -> None:
    code = "import sys, rlhfkit.cli_errors; assert 'sqlalchemy' not in sys.modules, 'sqlalchemy loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_members_roles_tokens_and_guidelines_from_the_command_line(tmp_path: Path) -> None:
    db = str(tmp_path / "feedback.db")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    for project in ("demo", "other"):
        assert run("import", prompts, "--db", db, "--project", project, "--k", "3")[0] == 0
    code, token, err = run("add-annotator", "ada", "--db", db, "--project", "demo")
    assert code == 0 and "added annotator 'ada' of project 'demo'" in err
    one_line_error(["add-annotator", "bob", "--db", db, "--admin"], "roles are per project; give --project")
    one_line_error(["add-annotator", "ada", "--db", db], "annotator 'ada' already exists; add them to a project")
    code, out, _ = run("add-member", "ada", "--db", db, "--project", "other", "--admin")
    assert code == 0 and "'ada' is added as admin of project 'other'" in out
    one_line_error(["add-member", "nobody", "--db", db, "--project", "demo"], "annotator 'nobody' not found")
    with FeedbackStore.open(db) as store:
        assert [(m.annotator, m.role) for m in store.members("other")] == [("ada", "admin")]
        assert store.annotator_for_token(token.strip(), "demo").role == "annotator"
        assert store.annotator_for_token(token.strip(), "other").role == "admin"

    code, new, err = run("rotate-token", "ada", "--db", db)
    assert code == 0 and "the old one no longer works" in err and new.strip() != token.strip()
    assert run("revoke", "ada", "--db", db)[0] == 0
    with FeedbackStore.open(db) as store:
        assert store.annotator_for_token(token.strip()) is None
        assert store.annotator_for_token(new.strip()) is None  # revoked
    code, newer, _ = run("rotate-token", "ada", "--db", db)  # a lost token is replaced the same way
    with FeedbackStore.open(db) as store:
        assert store.annotator_for_token(newer.strip(), "demo").name == "ada"
    assert run("remove-member", "ada", "--db", db, "--project", "other")[0] == 0
    one_line_error(["remove-member", "ada", "--db", db, "--project", "other"], "is not a member of project 'other'")

    guide = tmp_path / "guide.md"
    guide.write_text("Prefer the shorter answer.\nNever reward rudeness.\n", encoding="utf-8")
    code, out, _ = run("guidelines", "--db", db, "--project", "demo", "--file", guide)
    assert code == 0 and "guidelines of project 'demo' set" in out
    code, out, _ = run("guidelines", "--db", db, "--project", "demo")
    assert out == "Prefer the shorter answer.\nNever reward rudeness.\n"
    assert run("guidelines", "--db", db, "--project", "demo", "--clear")[0] == 0
    assert "has no guidelines" in run("guidelines", "--db", db, "--project", "demo")[1]
    one_line_error(["guidelines", "--db", db, "--project", "demo", "--file", tmp_path / "nope.md"], "file not found")

    code, out, _ = run("status", "--db", db, "--project", "demo")
    assert code == 0 and "annotator" in out and "comments" in out and "Rounds" in out
    one_line_error(["export", "--db", db, "--project", "demo", "--out", tmp_path / "x.jsonl", "--rounds", "2"],
                   "project 'demo' has no round 2 (its rounds: 1)")
    one_line_error(["export", "--db", db, "--project", "demo", "--out", tmp_path / "x.jsonl", "--rounds", "two"],
                   "--rounds: 'two' is not a round number or range")
