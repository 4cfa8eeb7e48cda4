"""`rlhfkit feedback ...`: fill the store, serve the ranking page, report progress, export rankings.

    rlhfkit feedback sample prompts.jsonl --project demo --k 4      # the model writes K completions each
    rlhfkit feedback import prompts.jsonl --project demo --k 4      # or bring prompts (+ completions)
    rlhfkit feedback import prompts.jsonl --project hh --k 4 --criterion "helpful=Answers the question" \
        --criterion "harmless=Says nothing unsafe"                  # one ranking per criterion
    rlhfkit feedback criteria hh [--add NAME=DESCRIPTION] [--file criteria.yaml]  # list / add criteria
    rlhfkit feedback guidelines --project demo --file guide.md      # what "better" means, on the page
    rlhfkit feedback add-annotator ada --project demo               # prints ada's token once
    rlhfkit feedback add-member ada --project other --admin         # roles are per project
    rlhfkit feedback rotate-token ada | revoke ada | remove-member ada --project demo
    rlhfkit feedback serve --project demo --annotators-per-prompt 2 # http://127.0.0.1:8000
    rlhfkit feedback status --project demo                          # progress, rounds and agreement
    rlhfkit feedback export --project demo --format pairwise --out prefs.jsonl [--rounds 1,2] [--criterion helpful]
    rlhfkit feedback sample prompts.jsonl --project demo --model ppo_out --new-round   # the next round

Every command takes `--db` (a SQLite file, feedback.db by default, or a PostgreSQL URL). Store
and web modules are imported inside the commands so that `rlhfkit --help` stays fast.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rlhfkit.cli_errors import one_line_errors
from rlhfkit.defaults import DEFAULT_DB, EMBEDDED_MODEL
from rlhfkit.errors import UserError
from rlhfkit.feedback.checks import MAX_K, MIN_K

if TYPE_CHECKING:
    from rlhfkit.feedback.store import FeedbackStore

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_K = 4  # completions per prompt of a project `sample` creates

feedback_app = typer.Typer(
    name="feedback",
    help="Collect human rankings of sampled completions and export them for the reward model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ExportFormat(str, Enum):
    pairwise = "pairwise"
    ranked = "ranked"
    annotations = "annotations"


class Merge(str, Enum):
    majority = "majority"
    all = "all"


DB = typer.Option(DEFAULT_DB, "--db", help="SQLite file, or postgresql+psycopg://user:password@host:5432/dbname.")
PROJECT = typer.Option(..., "--project", "-p", help="Project name.")
PER_PROMPT = typer.Option(1, "--annotators-per-prompt", "-n", min=1, help="How many annotators rank each prompt.")
ADMIN = typer.Option(False, "--admin", help="Admin of the project: may also open its admin page.")
CRITERIA = typer.Option(
    None, "--criterion", metavar="NAME=DESCRIPTION", help="A criterion to rank by when the project is created "
    "(repeat it for several, in page order), e.g. 'helpful=Answers what was asked'. Default: one, 'overall'.",
)


def check_project_criteria(store: FeedbackStore, project: str, declared: list[tuple[str, str]]) -> None:
    """--criterion on an existing project must name its criteria (they are changed with `criteria`)."""
    if not declared:
        return
    have = [c.name for c in store.criteria(project)]
    if have != [n for n, _ in declared]:
        raise UserError(f"--criterion: project {project!r} exists with criteria {', '.join(have)}; change them with "
                        f"`rlhfkit feedback criteria {project} --add NAME=DESCRIPTION`")


def parse_names(values: list[str] | None) -> list[str] | None:
    """--criterion a --criterion b,c -> ['a', 'b', 'c']; None: every criterion."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def parse_rounds(text: str | None) -> list[int] | None:
    """'2,3' or '1-3' -> [2, 3] / [1, 2, 3]; None: every round."""
    if text is None:
        return None
    rounds: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise UserError(f"--rounds: {part!r} is not a round number or range; e.g. --rounds 2,3 or 1-3") from None
        if first < 1 or last < first:
            raise UserError(f"--rounds: {part!r} is not a range of rounds from 1 up; e.g. --rounds 2,3 or 1-3")
        rounds.update(range(first, last + 1))
    return sorted(rounds)


@feedback_app.command("import")
@one_line_errors
def import_prompts(
    file: Path = typer.Argument(..., help='JSON lines: {"prompt": str, "completions": [str, ...]} (optional).'),
    db: str = DB,
    project: str = PROJECT,
    k: int | None = typer.Option(None, "--k", help="Completions per prompt; needed when the project is new."),
    model: str = typer.Option("imported", "--model", help="Model id to record for the imported completions."),
    sampling: str = typer.Option("{}", "--sampling", help='Sampling settings to record (JSON): {"temperature": 1.0}.'),
    criterion: list[str] | None = CRITERIA,
) -> None:
    """Add prompts (and optionally their K completions) from a JSON-lines file to a project."""
    from rlhfkit.feedback.criteria import parse_criteria
    from rlhfkit.feedback.importer import read_prompt_file
    from rlhfkit.feedback.store import FeedbackStore, NotFound

    declared = parse_criteria(criterion)

    try:
        settings = json.loads(sampling)
    except json.JSONDecodeError as e:
        raise UserError(f"--sampling: not valid JSON ({e.msg}); e.g. --sampling '{{\"temperature\": 1.0}}'") from None
    if not isinstance(settings, dict):
        raise UserError(f"--sampling: expected a JSON object, got {type(settings).__name__}")
    if k is not None and not MIN_K <= k <= MAX_K:
        raise UserError(
            f"--k: must be from {MIN_K} to {MAX_K} (a ranking needs two completions; keys 1-9 pick them), got {k}"
        )
    rows = read_prompt_file(file)  # check the file before touching the database
    with FeedbackStore.open(db) as store:
        try:
            info = store.project(project)
        except NotFound:
            if k is None:
                raise UserError(f"project {project!r} does not exist yet; give --k (completions per prompt)") from None
            info = None
        if info is not None and k is not None and k != info.k:
            raise UserError(f"project {project!r} has k={info.k}; --k {k} does not match (leave --k out)")
        if info is not None:
            check_project_criteria(store, project, declared)
        if rows[0].completions is not None:
            rows = read_prompt_file(file, info.k if info else k)  # the counts, now that k is known
        if info is None:
            info = store.create_project(project, k, criteria=declared or None)  # type: ignore[arg-type]  (k is set)
        rounds = store.rounds(info)
        known = store.find_prompts(info, [r.prompt for r in rows], round=rounds[-1] if rounds else None)
        if known:
            first = next(r for r in rows if r.prompt in known)
            raise UserError(
                f"{file}, row {first.row}: prompt already in project {project!r} (prompt id {known[first.prompt]}); "
                f"{len(known)} of the file's prompts are; remove them from the file"
            )
        completions = [r.completions or [] for r in rows] if rows[0].completions is not None else None
        ids = store.add_prompts(info, [r.prompt for r in rows], completions, model=model, sampling=settings)
    what = f" with {info.k} completions each" if completions is not None else " (no completions yet)"
    typer.echo(f"imported {len(ids)} prompts{what} into project {project!r} (prompt ids {ids[0]}-{ids[-1]})")


@feedback_app.command("sample")
@one_line_errors
def sample_prompts(
    file: Path = typer.Argument(..., help="Prompts: .jsonl/.csv/.parquet with a 'prompt' column, or .txt."),
    db: str = DB,
    project: str = PROJECT,
    model: str = typer.Option(
        EMBEDDED_MODEL, "--model", help=f"Model that writes the completions (HF id, dir, {EMBEDDED_MODEL})."
    ),
    k: int | None = typer.Option(None, "--k", help="Completions per prompt (default: the project's; 4 for a new one)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1, help="Longest completion in tokens."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (> 0)."),
    top_k: int = typer.Option(0, "--top-k", min=0, help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    seed: int = typer.Option(0, "--seed", help="Completion j of prompt i is sampled with a seed from (seed, i, j)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Completions sampled per batch."),
    new_round: bool = typer.Option(
        False, "--new-round", help="Put the prompts into a new round of the project (its latest + 1), e.g. sampled "
        "again from a trained policy folder; without it, fill the latest round.",
    ),
    # ---- active selection (rlhfkit.feedback.selection): options read by the block marked below ----
    select: str | None = typer.Option(
        None, "--select", metavar="uncertain|random", help="Keep only --budget prompts of the file, the reward "
        "model's most uncertain or random ones (seeded by --seed). Without it, every prompt. See "
        "docs/active-selection.md."),
    budget: int | None = typer.Option(None, "--budget", metavar="N", help="How many prompts to keep with --select."),
    reward_model: list[Path] | None = typer.Option(
        None, "--reward-model", metavar="DIR", help="Reward model folder for --select uncertain; repeat it for an "
        "ensemble (their disagreement is the uncertainty)."),
    # ---- end of active selection options ----
    criterion: list[str] | None = CRITERIA,
) -> None:
    """Sample K completions per prompt with a model (an HF id or any policy folder, LoRA adapters too)
    into a project, ready to rank: into its latest round, filling prompts imported without
    completions, or with --new-round into the next round."""
    from rlhfkit.data.prompts import prompt_texts, read_prompt_rows
    from rlhfkit.feedback import rounds
    from rlhfkit.feedback.criteria import parse_criteria
    from rlhfkit.feedback.policy import load_policy
    from rlhfkit.feedback.selection import check_selection, sample_selected
    from rlhfkit.feedback.store import FeedbackStore, NotFound
    from rlhfkit.models.loading import LoadOptions, configure_loading, load_tokenizer
    from rlhfkit.rollout.completions import sample_completions
    from rlhfkit.rollout.sampling import SamplingSettings

    if k is not None and not MIN_K <= k <= MAX_K:
        raise UserError(f"--k: must be from {MIN_K} to {MAX_K} (a ranking needs two completions), got {k}")
    declared = parse_criteria(criterion)
    try:
        settings = SamplingSettings(max_new_tokens, temperature, top_k, top_p)
    except ValueError as e:
        raise UserError(f"sampling settings: {e}") from None
    configure_loading(LoadOptions())  # fp32 weights, no remote code
    tokenizer = load_tokenizer(model, padding_side="left")
    texts, _ = prompt_texts(read_prompt_rows(file), str(file), tokenizer)  # check the file first
    with FeedbackStore.open(db) as store:  # and the database, before the model works
        try:
            info = store.project(project)
            if k is not None and info.k != k:
                raise UserError(f"project {project!r} has k={info.k}; pass --k {info.k} (or leave --k out)")
            k = info.k
            check_project_criteria(store, project, declared)
        except NotFound:
            info = None
            k = k if k is not None else DEFAULT_K
        plan = rounds.plan(store, info, texts, new_round, str(file))
        check_selection(select, budget, reward_model, len(plan.texts))  # before the model loads
        policy = load_policy(model, tokenizer)
        # ---- active selection (docs/active-selection.md): without --select, every prompt of the plan ----
        chosen, completions, note = sample_selected(
            plan.texts, lambda some: sample_completions(policy, tokenizer, some, k, settings, seed=seed,
                                                        batch_size=batch_size),
            select, budget, reward_model, seed=seed, batch_size=batch_size)
        plan = rounds.narrow(plan, chosen)
        if note:
            typer.echo(note)
        # ---- end of active selection ----
        sampled = dict(zip(chosen, completions, strict=True))
        if info is None:
            info = store.create_project(project, k, criteria=declared or None)
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "max_new_tokens": max_new_tokens,
                    "seed": seed}
        n = rounds.store_samples(store, info, plan, sampled, model, sampling)
    filled = f" ({len(plan.fill)} imported without completions)" if plan.fill else ""
    typer.echo(f"sampled {k} completions for each of {n} prompts{filled} into round {plan.round} of project "
               f"{project!r}")


@feedback_app.command("add-annotator")
@one_line_errors
def add_annotator(
    name: str = typer.Argument(..., help="Annotator name (unique)."),
    db: str = DB,
    project: str | None = typer.Option(None, "--project", "-p", help="Project they work on (more: add-member)."),
    admin: bool = ADMIN,
) -> None:
    """Add an annotator and print their sign-in token (shown this once; only its hash is stored)."""
    from rlhfkit.feedback.store import FeedbackStore

    if admin and project is None:
        raise UserError("--admin: roles are per project; give --project NAME")
    role = "admin" if admin else "annotator"
    with FeedbackStore.open(db) as store:
        token = store.add_annotator(name, project, role)
    where = f" of project {project!r}" if project else " (no project yet: add-member gives them one)"
    typer.echo(f"added {role} {name!r}{where}; their token (shown only now, hand it over privately):", err=True)
    typer.echo(token)


@feedback_app.command("add-member")
@one_line_errors
def add_member(
    name: str = typer.Argument(..., help="An existing annotator."), db: str = DB, project: str = PROJECT,
    admin: bool = ADMIN,
) -> None:
    """Let an annotator work on a project (or change their role there); their token stays the same."""
    from rlhfkit.feedback.store import FeedbackStore

    role = "admin" if admin else "annotator"
    with FeedbackStore.open(db) as store:
        was = store.add_member(project, name, role)
    typer.echo(f"{name!r} is {'now' if was else 'added as'} {role} of project {project!r}")


@feedback_app.command("remove-member")
@one_line_errors
def remove_member(
    name: str = typer.Argument(..., help="Annotator name."), db: str = DB, project: str = PROJECT
) -> None:
    """Take an annotator off a project (their rankings stay; the prompts they held go back to the queue)."""
    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore.open(db) as store:
        store.remove_member(project, name)
    typer.echo(f"removed {name!r} from project {project!r}; their rankings stay")


@feedback_app.command("revoke")
@one_line_errors
def revoke(name: str = typer.Argument(..., help="Annotator name."), db: str = DB) -> None:
    """Make an annotator's token stop working in every project (rankings stay; rotate-token gives a new one)."""
    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore.open(db) as store:
        store.revoke_token(name)
    typer.echo(f"revoked the token of {name!r}: refused from the next request on; their rankings stay")


@feedback_app.command("rotate-token")
@one_line_errors
def rotate_token(name: str = typer.Argument(..., help="Annotator name."), db: str = DB) -> None:
    """Give an annotator a new token (a lost or leaked one stops working at once) and print it once."""
    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore.open(db) as store:
        token = store.rotate_token(name)
    typer.echo(f"new token of {name!r} (shown only now; the old one no longer works):", err=True)
    typer.echo(token)


@feedback_app.command("criteria")
@one_line_errors
def criteria(
    project: str = typer.Argument(..., help="Project name."),
    db: str = DB,
    add: list[str] | None = typer.Option(
        None, "--add", metavar="NAME=DESCRIPTION", help="Add a criterion after the existing ones (repeatable). "
        "Rankings made before it have no ranks by it; changing one of them then asks for them."),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="YAML file of criteria (name: description): new names are added, known "
        "names get the file's description."),
    describe: list[str] | None = typer.Option(
        None, "--describe", metavar="NAME=DESCRIPTION", help="Change a criterion's description (repeatable)."),
    remove: list[str] | None = typer.Option(
        None, "--remove", metavar="NAME", help="Remove a criterion no ranking uses yet (repeatable)."),
) -> None:
    """List the criteria a project's annotators rank by, and add, describe or remove them."""
    from rlhfkit.feedback.criteria import parse_criteria, read_criteria_file
    from rlhfkit.feedback.store import FeedbackStore

    added = parse_criteria(add, "--add")
    described = parse_criteria(describe, "--describe")
    from_file = read_criteria_file(file) if file is not None else []  # check the file before the database
    with FeedbackStore.open(db) as store:
        have = {c.name for c in store.criteria(project)}
        added += [(n, d) for n, d in from_file if n not in have and n not in {a for a, _ in added}]
        described += [(n, d) for n, d in from_file if n in have]
        for name, description in described:
            store.describe_criterion(project, name, description)
        if added:
            store.add_criteria(project, added)
        for name in remove or []:
            store.remove_criterion(project, name)
        shown = store.criteria(project)
    for c in shown:
        typer.echo(f"{c.name}\t{c.description}" if c.description else c.name)
    changes = [f"{what} {', '.join(names)}" for what, names in (
        ("added", [n for n, _ in added]), ("described", [n for n, _ in described]), ("removed", remove or []))
        if names]
    if changes:
        typer.echo(f"project {project!r}: " + "; ".join(changes), err=True)


@feedback_app.command("guidelines")
@one_line_errors
def guidelines(
    db: str = DB,
    project: str = PROJECT,
    file: Path | None = typer.Option(None, "--file", "-f", help="UTF-8 text file: what 'better' means here."),
    clear: bool = typer.Option(False, "--clear", help="Remove the project's guidelines."),
) -> None:
    """Set the task guidelines annotators see above every prompt (plain text); without --file, print them."""
    from rlhfkit.feedback.store import FeedbackStore

    if file is not None and clear:
        raise UserError("--file and --clear: give one of them")
    text = None
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{file}: file not found") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{file}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    with FeedbackStore.open(db) as store:
        if file is None and not clear:
            shown = store.project(project).guidelines
            typer.echo(shown if shown else f"project {project!r} has no guidelines; set them with --file")
            return
        info = store.set_guidelines(project, text)
    typer.echo(f"guidelines of project {project!r} {'set' if info.guidelines else 'removed'}")


@feedback_app.command("serve")
@one_line_errors
def serve(
    db: str = DB,
    project: str = PROJECT,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    annotators_per_prompt: int = PER_PROMPT,
) -> None:
    """Serve the ranking page for a project until Ctrl-C."""
    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.app import serve as run_server
    from rlhfkit.feedback.store import FeedbackStore

    store = FeedbackStore.open(db)
    app = create_app(store, project, annotators_per_prompt)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"labeling project {project!r} at http://{shown}:{port}/  (admin page: /admin; Ctrl-C stops)")
    if host not in LOOPBACK:
        typer.secho(
            "warning: serving beyond this machine over plain HTTP: tokens and rankings travel unencrypted; "
            "put it behind an HTTPS proxy",
            err=True,
            fg=typer.colors.YELLOW,
        )
    try:
        run_server(app, host=host, port=port)
    finally:
        store.close()


@feedback_app.command("export")
@one_line_errors
def export(
    db: str = DB,
    project: str = PROJECT,
    out: Path = typer.Option(..., "--out", "-o", help="JSON-lines file to write (replaced atomically)."),
    format: ExportFormat = typer.Option(
        ExportFormat.pairwise, "--format", help="pairwise: prompt/chosen/rejected; ranked: prompt/completions(/ranks); "
        "annotations: every ranking and skip with its flag and comment.",
    ),
    merge: Merge = typer.Option(
        Merge.majority, "--merge", help="majority: one merged ranking per prompt (mean rank); all: one per annotator."
    ),
    drop_flagged: bool = typer.Option(
        True, "--drop-flagged/--keep-flagged", help="Leave out prompts an annotator flagged unsafe."
    ),
    rounds: str | None = typer.Option(None, "--rounds", help="Only these rounds: 2,3 or 1-3 (default: all)."),
    criterion: list[str] | None = typer.Option(
        None, "--criterion", metavar="NAME", help="Only rankings by these criteria (repeatable, or a comma list); "
        "default: every criterion, each row tagged with its \"criterion\"."),
) -> None:
    """Write the rankings as training data for the reward model (skipped prompts never appear in
    pairwise/ranked rows; each row carries its criterion, round, unsafe flag and comments)."""
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.feedback.store import FeedbackStore

    selected = parse_rounds(rounds)
    names = parse_names(criterion)
    if criterion and not names:
        raise UserError("--criterion: no criterion name given; e.g. --criterion helpful")
    with FeedbackStore.open(db) as store:
        rows = store.export_rows(project, format=format.value, merge=merge.value, drop_flagged=drop_flagged,
                                 rounds=selected, criteria=names)
    n = write_jsonl(out, rows)
    typer.echo(f"wrote {n} {format.value} rows ({merge.value}) to {out}")
    if n == 0:
        typer.secho(f"warning: project {project!r} has no rankings to export yet", err=True, fg=typer.colors.YELLOW)


@feedback_app.command("status")
@one_line_errors
def status(
    db: str = DB,
    project: str = PROJECT,
    annotators_per_prompt: int = PER_PROMPT,
    comments: int = typer.Option(10, "--comments", min=0, help="Show the newest N comments (0: none)."),
) -> None:
    """Show progress per round and annotator, the newest comments, and the agreement between annotators."""
    from rich.console import Console
    from rich.table import Table

    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore.open(db) as store:
        progress = store.progress(project, annotators_per_prompt)
        agreement = store.agreement(project)
        notes = store.comments(project, comments) if comments else []
    console = Console()
    console.print(
        f"project [bold]{progress.project}[/] (k={progress.k}): {progress.prompts} prompts, {progress.ready} with all "
        f"completions, {progress.rankings} rankings, {progress.complete} prompts ranked by "
        f"{progress.annotators_per_prompt} or more annotators",
        highlight=False,
    )
    table = Table(title="Rounds")
    for column in ("round", "prompts", "ready", "rankings", "complete"):
        table.add_column(column, justify="right")
    for r in progress.rounds:
        table.add_row(str(r.round), str(r.prompts), str(r.ready), str(r.rankings), str(r.complete))
    console.print(table)
    if len(progress.criteria) > 1:
        table = Table(title="Criteria")
        for column in ("criterion", "rankings", "complete", "agreement", "disagreement", "kendall tau"):
            table.add_column(column, justify="left" if column == "criterion" else "right")
        for c in progress.criteria:
            table.add_row(c.criterion, str(c.rankings), str(c.complete), _num(c.agreement),
                          _num(None if c.agreement is None else 1 - c.agreement), _num(c.kendall_tau))
        console.print(table)
    numbers = ("ranked", "skipped", "unsafe", "comments")
    table = Table(title="Progress")
    for column in ("annotator", "role", *numbers, "last"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for a in progress.annotators:
        last = a.last_at.strftime("%Y-%m-%d %H:%M UTC") if a.last_at else "-"
        role = a.role + (" (revoked)" if a.revoked else "")
        table.add_row(a.annotator, role, str(a.ranked), str(a.skipped), str(a.unsafe), str(a.comments), last)
    console.print(table)
    if notes:
        table = Table(title=f"Newest comments ({len(notes)})")
        for column in ("prompt", "round", "annotator", "comment", "flag"):
            table.add_column(column, justify="right" if column in ("prompt", "round") else "left")
        for c in notes:
            flag = ", ".join(f for f, on in (("skipped", c.skip), ("unsafe", c.unsafe)) if on)
            table.add_row(str(c.prompt_id), str(c.round), c.annotator, c.comment, flag)
        console.print(table)
    if not agreement.pairs:
        console.print("agreement: no prompt has been ranked by two annotators yet")
        return
    several = len(progress.criteria) > 1
    title = f" (by {progress.criteria[0].criterion}; the others: Criteria above)" if several else ""
    table = Table(title="Agreement on shared prompts" + title)
    for column in ("annotator", "annotator", "prompts", "pairs", "agreement", "kendall tau"):
        table.add_column(column, justify="left" if column == "annotator" else "right")
    for pair in agreement.pairs:
        tau = "-" if pair.kendall_tau is None else f"{pair.kendall_tau:.3f}"
        table.add_row(pair.first, pair.second, str(pair.prompts), str(pair.pairs), f"{pair.agreement:.3f}", tau)
    console.print(table)
    tau = "-" if agreement.kendall_tau is None else f"{agreement.kendall_tau:.3f}"
    console.print(f"overall: agreement {agreement.agreement:.3f}, kendall tau {tau}", highlight=False)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
