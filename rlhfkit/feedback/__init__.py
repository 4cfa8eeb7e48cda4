"""Human feedback: the ranking store, the web page annotators rank in, and export to training rows.

    store.py      FeedbackStore: the Python API over the database (usable without HTTP)
    store_base.py, store_projects.py, store_annotators.py, store_rankings.py, store_reports.py
                  its parts: opening, transactions and lookups; projects, criteria, prompts;
                  annotators, members, tokens; the queue calls and rankings; the reports
    queue.py      the labelling queue: which prompt an annotator gets next, leases, going back,
                  and the checks that the web API enforces it
    reports.py    progress (per member and round), agreement, the admin's prompt views, export rows
    schema.py     the tables (SQLAlchemy ORM); migrations/ creates and upgrades them (Alembic)
    database.py   opening SQLite files and PostgreSQL URLs
    checks.py     named limits and input checks;  errors.py, records.py: what the API raises and returns
    agreement.py  pairwise agreement and Kendall tau-b between annotators
    export.py     rankings -> pairwise / ranked training rows, merging annotators
    importer.py   reading prompts (and completions) from JSON lines
    criteria.py   reading criteria declarations: --criterion NAME=DESCRIPTION, criteria files
    rounds.py     where `feedback sample` puts completions: the latest round or a new one
    policy.py     loading the policy `feedback sample` samples from (LoRA adapter folders too)
    app.py        the FastAPI app and templates/label.html, the one page
    cli.py        `rlhfkit feedback ...`

Nothing is imported here, so that `rlhfkit --help` does not load SQLAlchemy or FastAPI.
"""
