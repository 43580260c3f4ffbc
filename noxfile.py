"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`.

Virtual environments are reused between runs (PyTorch is several GB).
"""

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[train,detect,dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".[train,detect,dev]")  # mypy needs the dependencies' types
    session.run("ruff", "check", "src", "tests", "benchmarks", "tools")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "tools")
    session.run("mypy")  # src/faceattr, configured in pyproject.toml


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".[train,dev]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
