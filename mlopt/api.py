"""The Python entry points: `optimize_package` (path to path) and `optimize` (MLModel to MLModel)."""

import os

from .compute_units import compute_units_name, skip_reason
from .errors import BadInputError
from .package import PackageWriter, load_spec, locate_package
from .report import Report


def optimize_package(in_path, out_path=None, compute_units="CPU_AND_NE", force=False, dry_run=False, verify=True, link=False):
    """Optimize the package at `in_path` into `out_path` and return a Report.

    The input is never modified (in-place, `out_path == in_path`, needs `force` and is still atomic). With
    `dry_run` nothing is written and `out_path` may be None. `verify=False` skips the numerical self-check.
    `link` hard-links the output's files (weights) to the input's instead of copying them.
    """
    units = compute_units_name(compute_units)
    if out_path is None and not dry_run:
        raise BadInputError(in_path, "no output path given")
    package = locate_package(in_path)
    try:
        return _optimize_package(package, in_path, out_path, units, force, dry_run, verify, link)
    finally:
        package.close()


def _optimize_package(package, in_path, out_path, units, force, dry_run, verify, link):
    report = Report(input=os.fspath(in_path), output=out_path and os.fspath(out_path), compute_units=units)
    report.note = skip_reason(units)
    if dry_run:
        report.functions = _analyse(package, units, verify, dry_run=True)
        return report
    # The copy starts first and runs in the background while the spec is parsed, the analysis imported and
    # run: a large model costs about its copy. A spec that turns out bad aborts the writer: nothing is left.
    with PackageWriter(package, out_path, force=force, link=link) as writer:
        report.functions = _analyse(package, units, verify)
        # an unchanged model file is copied as bytes, not re-serialised
        methods = writer.commit(package.spec if report.rewrites else None)
    report.written = True
    report.copy_method = ", ".join(sorted(methods))
    report.housekeeping = writer.notes
    return report


def _analyse(package, units, verify, dry_run=False):
    """Parse and check the spec and the weights it refers to, then run the optimize pipeline on it."""
    from .numerics.weights import check_blob_references

    load_spec(package)
    blobs = package.blob_reader()
    try:
        check_blob_references(package.spec, blobs)
        return _optimize_spec()(package.spec, units, dry_run=dry_run, blobs=blobs, verify=verify, validated=True)
    finally:
        blobs.close()


def _optimize_spec():
    """The analysis pipeline, imported when first needed (numpy, the interpreter): after the copy has started."""
    from .optimize import optimize_spec

    return optimize_spec


def optimize(mlmodel, compute_units=None, verify=True):
    """Return a new `coremltools.models.MLModel` with every RMSNorm chain rewritten.

    `compute_units` defaults to the model's own (`mlmodel.compute_unit`); only `CPU_AND_NE` rewrites. Works on
    Linux, where the returned model is spec-only (`skip_model_load`) like the input.
    """
    import coremltools as ct

    from .package.proto import Model_pb2

    units = compute_units_name(compute_units if compute_units is not None else mlmodel.compute_unit)
    if mlmodel.get_spec().WhichOneof("Type") != "mlProgram":
        raise BadInputError(getattr(mlmodel, "package_path", "<model>"), "not an ML program; nothing to do")
    spec = Model_pb2.Model()
    spec.CopyFrom(mlmodel.get_spec())
    model_dir = os.path.dirname(mlmodel.weights_dir)
    _optimize_spec()(spec, units, model_dir=model_dir, verify=verify, model_path=getattr(mlmodel, "package_path", None) or model_dir)
    return ct.models.MLModel(
        spec,
        weights_dir=mlmodel.weights_dir,
        compute_units=ct.ComputeUnit[units],
        skip_model_load=getattr(mlmodel, "__proxy__", None) is None,
    )
