"""Errors mlopt raises on purpose.

`BadInputError` is the user's problem (a missing path, a file that is no ML program, a corrupt protobuf, an output
location that cannot be used): the CLI prints its one-line message and exits 2 without a traceback.
`CannotVerify` is `mlopt verify` meeting a model its interpreter cannot run (an op it does not implement, a
program it cannot evaluate): exit 3, distinct from 1 ("outputs differ"), because nothing was compared.
`OutputError` is a write that failed for a reason outside mlopt (disk full, an I/O error): one line naming OUT,
exit 1, nothing left behind. Anything else escaping mlopt is our bug and exits 1.
"""


class MloptError(Exception):
    """Base class of the errors mlopt raises on purpose. `problem` is worded for Python callers; `cli_problem`, if
    the command line says it differently (`--force` where Python has `force=True`), for the command line."""

    def __init__(self, path, problem, cli_problem=None):
        self.path = str(path)
        self.problem = problem
        self.cli_problem = cli_problem or problem
        super().__init__(f"{self.path}: {problem}")

    @property
    def cli_text(self):
        return f"{self.path}: {self.cli_problem}"


class BadInputError(MloptError):
    """The input (or the requested output) cannot be processed. The message names the file and the problem."""


class OutputError(MloptError):
    """The output could not be written (disk full, I/O error). The message names OUT and the cause."""


class CannotVerify(MloptError):
    """`verify` cannot run the model in mlopt's interpreter. The message names the package and the reason."""
