"""`mlopt audit`: where a model stops being fp16-safe, shown without a Mac.

The program is run twice on the same inputs, in one streaming walk (audit_walk.py): as an fp16 device computes it
(fp16 rounded after every op, subnormals flushed to zero unless `subnormals="keep"`, accumulation per
`accumulate` - the model `verify` documents) and in float64 from the same stored constants. Every op output is
measured (float64 and device peaks, headroom, inf/NaN, flushed share, error against float64), findings are
raised where a problem starts, and the constants are checked statically (hazards.py).

Inputs: the user's .npz (`inputs_path`), else seeded random inputs shaped from the model's description, integer
inputs that index an embedding drawn below its row count - the same inputs `verify` draws (numerics/feeds.py).
The report says which were used. What the device does is partly assumed: docs/audit.md says which parts are
measured by others (with sources) and which are assumptions.
"""

import os

from ..errors import BadInputError, CannotVerify
from ..graph import SpecGraph
from ..numerics.feeds import check_declared_sizes, check_given_names, check_run_options, function_feeds, load_npz
from ..numerics.interpreter import InterpreterError
from ..numerics.ops.registry import ACCUMULATE, accumulating
from ..graph.stored_constants import check_blob_references
from .audit_report import AuditReport
from .audit_walk import walk
from .hazards import static_hazards
from .source import read_validated

SUBNORMALS = ("flush", "keep")


def audit_package(path, inputs_path=None, seed=0, scale=1.0, function=None, top=10, accumulate="fp32", subnormals="flush"):
    """Audit the package at `path`; returns an AuditReport (`.passed`: no finding). BadInputError for bad
    arguments or a package that cannot be read; CannotVerify for a program the interpreter cannot run."""
    check_arguments(seed, scale, top, accumulate, subnormals)
    given = load_npz(inputs_path)
    package = read_validated(path)
    blobs = package.blob_reader()
    try:
        check_blob_references(package.spec, blobs)
        return audit_program(package.spec, blobs, package.path, given, inputs_path, seed, scale, function, top,
                             accumulate, subnormals, source=os.fspath(path))
    finally:
        blobs.close()
        package.close()


def audit_program(spec, blobs, label, given=None, inputs_path=None, seed=0, scale=1.0, function=None, top=10,
                  accumulate="fp32", subnormals="flush", source=None):
    """Audit a program held in memory: `spec` (validated, its blob references checked), its weights read through
    `blobs` (a BlobReader, or NewBlobs' reader overlay: the weights a rewrite added, as they will be written).
    The headroom pass measures the program the first optimize pass produced this way, before anything is
    written. `label` names the model in errors and notes, `source` in the report (default `label`); `given`:
    the arrays of `load_npz(inputs_path)`. Returns the AuditReport."""
    check_arguments(seed, scale, top, accumulate, subnormals)
    given = {} if given is None else given
    check_given_names(given, spec, inputs_path)
    functions = sorted(spec.mlProgram.functions)
    if function is not None:
        if function not in functions:
            raise BadInputError(label, f"has no function '{function}' (it has: {', '.join(functions)})")
        functions = [function]
    report = AuditReport(source if source is not None else os.fspath(label), seed, scale, accumulate, subnormals, top,
                         functions=functions)
    with accumulating(ACCUMULATE[accumulate]):
        for name in functions:
            _audit_function(report, spec, blobs, label, name, given, inputs_path)
    return report


def audit(model_or_path, inputs=None, seed=0, scale=1.0, function=None, top=10, accumulate="fp32", subnormals="flush"):
    """`mlopt.audit`: audit a saved package (a path) or a `coremltools.models.MLModel` that has one
    (`package_path`). `inputs` is an .npz path. Returns the AuditReport."""
    path = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else getattr(model_or_path, "package_path", None)
    if path is None:
        raise BadInputError("<in-memory model>", "has no saved package to audit; save it first (model.save(path))")
    return audit_package(path, inputs, seed, scale, function, top, accumulate, subnormals)


def headroom_change(in_path, out_path, **options):
    """`optimize --audit`: both packages audited on the same inputs; {"before": summary, "after": summary}."""
    return {"before": audit_package(in_path, **options).summary(), "after": audit_package(out_path, **options).summary()}


def check_arguments(seed, scale, top=0, accumulate="fp32", subnormals="flush"):
    """BadInputError for an audit option no run could use."""
    check_run_options(seed, scale, accumulate, ACCUMULATE)
    if subnormals not in SUBNORMALS:
        raise BadInputError("--subnormals", f"{subnormals!r}: expected one of {', '.join(SUBNORMALS)}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise BadInputError("--top", f"{top!r}: expected a number of ops >= 0")


def _audit_function(report, spec, blobs, label, name, given, inputs_path):
    view = SpecGraph(name, spec.mlProgram.functions[name])
    check_declared_sizes(label, view, command="audit")
    report.findings += static_hazards(view, blobs)
    feeds, notes = function_feeds(label, spec, name, view, report.seed, report.scale, given, inputs_path, command="audit")
    described = {i for i in feeds if any(note.startswith(f"function '{name}' input '{i}':") for note in notes)}
    drawn = [i for i in feeds if i not in described]  # floats drawn with --scale: random_inputs says nothing of them
    if drawn:
        listed = ", ".join(f"'{i}' {list(feeds[i].shape)}" for i in drawn)
        notes.append(f"function '{name}' input{'s' * (len(drawn) != 1)} {listed}: floats drawn from N(0, {report.scale:g}^2), seed {report.seed}")
    report.notes += notes
    try:
        result = walk(view, blobs, feeds, flush=report.subnormals == "flush")
    except InterpreterError as e:
        raise CannotVerify(label, f"cannot be audited: function '{name}': {e}") from None
    report.outputs[name] = list(view.main.outputs)
    report.rows += result.rows
    report.findings += result.findings
    report.masked += result.masked
    if report.first_nonfinite is None:
        report.first_nonfinite = result.first_nonfinite if len(report.functions) == 1 or result.first_nonfinite is None else f"{name}/{result.first_nonfinite}"
