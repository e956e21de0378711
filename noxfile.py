"""nox sessions over the one venv that scripts/setup.sh builds (no session re-installs the stack).

    nox -s tests        the test suite (what CI runs)
    nox -s lint         ruff
    nox -s demo         the end-to-end CPU demo (the synthetic pipeline, its tables)
    nox -s regression   the synthetic pipeline with fixed seeds against results/baselines/ (-- --update rewrites it)
    nox -s bench        the performance benchmarks
"""

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]
PY = ".venv/bin/python"


def _setup(session: nox.Session) -> None:
    session.run("bash", "scripts/setup.sh", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    _setup(session)
    session.run(PY, "-m", "pytest", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    _setup(session)
    session.run(PY, "-m", "ruff", "check", ".", external=True)


@nox.session
def demo(session: nox.Session) -> None:
    _setup(session)
    session.run(".venv/bin/maet", "demo", *session.posargs, external=True)


@nox.session
def regression(session: nox.Session) -> None:
    _setup(session)
    session.run(".venv/bin/maet", "regression", *session.posargs, external=True)


@nox.session
def bench(session: nox.Session) -> None:
    _setup(session)
    session.run(PY, "-m", "benchmarks.perf.pretrain_step", *session.posargs, external=True)
