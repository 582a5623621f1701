"""Errors mlopt raises on purpose.

`BadInputError` is the user's problem (a missing path, a file that is no ML program, a corrupt protobuf): the CLI prints
its one-line message and exits 2 without a traceback. Anything else escaping mlopt is our bug and exits 1.
"""


class MloptError(Exception):
    """Base class of the errors mlopt raises on purpose."""


class BadInputError(MloptError):
    """The input (or the requested output) cannot be processed. The message names the file and the problem."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
