"""The two kinds of failure a user can meet, mapped onto exit codes by the CLI."""


class TscopeError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InputError(TscopeError):
    """Bad input or usage: the user can fix it (exit code 2)."""

    exit_code = 2


class RuntimeFailure(TscopeError):
    """Valid input, but the work failed (exit code 1)."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: a BaseException, so no ``except Exception`` swallows it, and the
    CLI exits with 128 + the signal number after every cleanup has run."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
