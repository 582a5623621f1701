"""The Python entry points: `optimize_package` (path to path) and `optimize` (MLModel to MLModel)."""

import logging
import os

from .compute_units import compute_units_name
from .errors import BadInputError
from .package import PackageWriter, load_spec, locate_package
from .report import Report
from .selection import Selection

log = logging.getLogger("mlopt")


def optimize_package(
    in_path, out_path=None, compute_units="CPU_AND_NE", force: bool = False, dry_run: bool = False, verify: bool = True,
    link: bool = False, only=None, skip=(), functions=None, rules=None,
) -> Report:
    """Optimize the package at `in_path` into `out_path` and return a Report.

    The input is never modified (in-place, `out_path == in_path`, needs `force` and is still atomic). With
    `dry_run` nothing is written, `out_path` may be None, and the report says what a real run would do.
    `verify=False` skips the numerical self-check. `link` hard-links the output's files (weights) to the input's
    instead of copying them. `only` / `skip` (chain anchor op names, as the report shows them) and `functions`
    (function names) limit what is rewritten; everything else is copied as it is. `rules` is the rule set (a
    tuple of rules/base.Rule; default: the registry).
    """
    units = compute_units_name(compute_units)
    if out_path is None and not dry_run:
        raise BadInputError(in_path, "no output path given")
    selection = Selection.of(only, skip, functions)
    package = locate_package(in_path)
    try:
        report = Report(input=os.fspath(in_path), output=out_path and os.fspath(out_path), compute_units=units, dry_run=dry_run)
        report.note = _skip_reason(units, rules)
        if dry_run:  # what a real run would do: OUT checked by the same rules, nothing written
            if out_path is not None:
                from .package import destination

                destination.check(destination.Destination.of(out_path), package, force)
            report.functions, new_blobs = _analyse(package, units, verify, selection, rules, dry_run=True)
            new_blobs.reader.close()
            return report
        return _write(package, report, out_path, force, link, units, verify, selection, rules)
    finally:
        package.close()


def _write(package, report, out_path, force, link, units, verify, selection, rules):
    # The copy starts first and runs in the background while the spec is parsed, the analysis imported and
    # run: a large model costs about its copy. A spec that turns out bad aborts the writer: nothing is left.
    with PackageWriter(package, out_path, force=force, link=link) as writer:
        report.functions, new_blobs = _analyse(package, units, verify, selection, rules)
        try:
            # an unchanged model file is copied as bytes, not re-serialised; weight files that receive new blobs
            # are rewritten over their copy (package/weight_writer.py)
            methods = writer.commit(package.spec if report.rewrites else None, new_blobs)
        finally:
            new_blobs.reader.close()
    report.written = True
    report.copy_method = ", ".join(sorted(methods))
    report.housekeeping = writer.notes
    if not os.fspath(out_path).rstrip("/").endswith(".mlpackage"):
        log.warning("%s: the output's name does not end in .mlpackage; Core ML tools (Xcode, coremltools) expect it", out_path)
    return report


def _analyse(package, units, verify, selection, rules, dry_run=False):
    """Parse and check the spec and the weights it refers to, then run the optimize pipeline on it: (function
    reports, the NewBlobs the rewrites added, to write with the package; its reader is open: the caller closes it)."""
    from .graph.stored_constants import check_blob_references
    from .graph.validate import validate_program
    from .package.weight_writer import NewBlobs

    load_spec(package)
    validate_program(package.spec, package.model_path)
    blobs = package.blob_reader()
    try:
        check_blob_references(package.spec, blobs)
        new_blobs = NewBlobs(blobs)
        functions = _optimize_spec()(
            package.spec, units, dry_run=dry_run, blobs=blobs, verify=verify, validated=True, selection=selection,
            model_path=package.model_path, label=package.path, rules=rules, new_blobs=new_blobs, lint=_lint_changes(),
        )
        return functions, new_blobs
    except BaseException:
        blobs.close()
        raise


def _optimize_spec():
    """The analysis pipeline, imported when first needed (numpy, the interpreter): after the copy has started."""
    from .engine import optimize_spec

    return optimize_spec


def _lint_changes():
    """The Neural Engine lint findings each function's rewrites fix, keep and add (docs/lint.md)."""
    from .analyses.lint import rewrite_changes

    return rewrite_changes


def _skip_reason(units, rules=None):
    from .rules import skip_reason

    return skip_reason(units, rules)


def optimize(mlmodel, compute_units="CPU_AND_NE", verify: bool = True, report: bool = False, rules=None):
    """Return a new `coremltools.models.MLModel` with every chain the rules match rewritten; with `report=True`,
    the pair `(model, Report)`.

    `compute_units` is the target the model is optimized for, as on the command line: `CPU_AND_NE` (the default,
    whatever the model was loaded with) lets every rule rewrite; with any other setting (a `ct.ComputeUnit` or
    its name) only the rules that pay there do (the LayerNorm rule, not the RMSNorm trick), and a UserWarning
    says which were held back. The returned model carries the setting. Works on
    Linux, where the returned model is spec-only (`skip_model_load`) like the input. `rules`: the rule set
    (default: the registry). A rewrite that would add a stored weight is left alone here (the weights folder is
    coremltools'); `optimize_package` writes it.
    """
    import warnings

    import coremltools as ct

    from .package.proto import Model_pb2

    units = compute_units_name("CPU_AND_NE" if compute_units is None else compute_units)
    source = getattr(mlmodel, "package_path", None) or "<in-memory model>"
    if mlmodel.get_spec().WhichOneof("Type") != "mlProgram":
        raise BadInputError(source, "not an ML program; nothing to do")
    skipped = _skip_reason(units, rules)
    if skipped:
        warnings.warn(f"mlopt.optimize: {skipped}", UserWarning, stacklevel=2)
    from .graph.stored_constants import check_blob_references
    from .graph.validate import validate_program
    from .package.weights import BlobReader

    spec = Model_pb2.Model()
    spec.CopyFrom(mlmodel.get_spec())
    validate_program(spec, source)
    result = Report(input=source, output=None, compute_units=units, note=skipped)
    # every weight the program names is checked first, as for a package: with verify=False too, a weight file
    # that is a FIFO or truncated is bad input here, not a failure inside coremltools' copy below
    blobs = BlobReader(os.path.dirname(mlmodel.weights_dir))
    try:
        check_blob_references(spec, blobs)
        result.functions = _optimize_spec()(spec, units, blobs=blobs, verify=verify, validated=True, model_path=source,
                                            rules=rules, lint=_lint_changes())
    finally:
        blobs.close()
    try:
        model = ct.models.MLModel(
            spec,
            weights_dir=mlmodel.weights_dir,
            compute_units=ct.ComputeUnit[units],
            skip_model_load=getattr(mlmodel, "__proxy__", None) is None,
        )
    except (RuntimeError, OSError) as e:  # coremltools copies the weights folder: an unreadable file in it
        raise BadInputError(mlmodel.weights_dir, f"coremltools could not copy the weights: {e}") from None
    return (model, result) if report else model
