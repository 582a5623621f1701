"""The Python entry points: `optimize_package` (path to path) and `optimize` (MLModel to MLModel)."""

import logging
import math
import os

from .compute_units import compute_units_name
from .errors import BadInputError
from .package import PackageWriter, load_spec, locate_package
from .report import Report
from .selection import Selection

log = logging.getLogger("mlopt")


def optimize_package(
    in_path, out_path=None, compute_units="CPU_AND_NE", force: bool = False, dry_run: bool = False, verify: bool = True,
    link: bool = False, only=None, skip=(), functions=None, rules=None, headroom: bool = False,
    headroom_target: float = 2, inputs=None, seed: int = 0, scale: float = 1.0, split_outputs: bool = False,
) -> Report:
    """Optimize the package at `in_path` into `out_path` and return a Report.

    The input is never modified (in-place, `out_path == in_path`, needs `force` and is still atomic). With
    `dry_run` nothing is written, `out_path` may be None, and the report says what a real run would do.
    `verify=False` skips the numerical self-check. `link` hard-links the output's files (weights) to the input's
    instead of copying them. `only` / `skip` (chain anchor op names, as the report shows them) and `functions`
    (function names) limit what is rewritten; everything else is copied as it is. `rules` is the rule set (a
    tuple of rules/base.Rule; default: the registry). `split_outputs` changes the model's interface where a split
    head is a function output: the function returns the chunks as outputs `<output>_0 ... <output>_{k-1}` instead
    of their concat (docs/rules.md, split_wide); the report says how to reassemble them.

    `headroom` runs the fp16_headroom rule (docs/headroom.md) after the others, as a second pass over the
    rewritten program: residual streams scaled by a power of two so that their float64 peak leaves
    `headroom_target` bits below fp16's 65504. The peaks are the audit's, of the program the first pass produced
    (a mask finite_mask made finite computes numbers where IN's float64 run was NaN), on the .npz `inputs`, else
    inputs drawn with `seed` and `scale`.
    """
    units = compute_units_name(compute_units)
    if out_path is None and not dry_run:
        raise BadInputError(in_path, "no output path given")
    selection = Selection.of(only, skip, functions)
    passes = [rules] + ([HeadroomPass(headroom_target, inputs, seed, scale)] if headroom else [])
    package = locate_package(in_path)
    try:
        report = Report(input=os.fspath(in_path), output=out_path and os.fspath(out_path), compute_units=units, dry_run=dry_run)
        report.note = _skip_reason(units, rules)
        if dry_run:  # what a real run would do: OUT checked by the same rules, nothing written
            if out_path is not None:
                from .package import destination

                destination.check(destination.Destination.of(out_path), package, force)
            report.functions, new_blobs = _analyse(package, units, verify, selection, passes, split_outputs, dry_run=True)
            new_blobs.reader.close()
            return report
        return _write(package, report, out_path, force, link, units, verify, selection, passes, split_outputs)
    finally:
        package.close()


def _write(package, report, out_path, force, link, units, verify, selection, passes, split_outputs):
    # The copy starts first and runs in the background while the spec is parsed, the analysis imported and
    # run: a large model costs about its copy. A spec that turns out bad aborts the writer: nothing is left.
    with PackageWriter(package, out_path, force=force, link=link) as writer:
        report.functions, new_blobs = _analyse(package, units, verify, selection, passes, split_outputs)
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


class HeadroomPass:
    """The headroom pass (docs/headroom.md): an Fp16HeadroomRule whose peaks are measured when the pass runs, on
    the program the first pass produced (`rules(spec, blobs, label)`): the float64 peak of every op output the
    audit measures (analyses/audit.py, on `inputs` or seeded random inputs). A mask the first pass made finite
    (finite_mask), a norm it rewrote: the peaks and the value names are the rewritten program's. The options
    are checked, and the .npz read, when the pass is made: bad ones stop the run before anything is rewritten."""

    def __init__(self, target_bits=2, inputs=None, seed=0, scale=1.0):
        from .analyses.audit import check_arguments
        from .numerics.feeds import load_npz
        from .rules.fp16_headroom import Fp16HeadroomRule

        try:
            self.rule = Fp16HeadroomRule(target_bits=target_bits)
        except ValueError as e:
            raise BadInputError("--headroom-target", str(e)) from None
        check_arguments(seed, scale)
        self.inputs, self.seed, self.scale = inputs, seed, scale
        self.given = load_npz(inputs)

    def rules(self, spec, blobs, label):
        """The pass's rule set, its rule holding the peaks of `spec` as it is now (weights read through `blobs`)."""
        from .analyses.audit import audit_program

        peaks = {}
        report = audit_program(spec, blobs, label, self.given, self.inputs, self.seed, self.scale, top=0)
        for row in report.rows:
            # a value float64 itself holds NaN in (0 * a stored -inf) has no measured peak: the rule says so
            peaks.setdefault(row.function, {})[row.op] = math.nan if row.nan_fp64 else row.peak_abs_fp64
        self.rule.peaks = peaks
        return (self.rule,)


def _rule_set(rules, spec, blobs, label):
    """A pass's rule set: as given, or the headroom pass's, measured on `spec` now."""
    return rules.rules(spec, blobs, label) if isinstance(rules, HeadroomPass) else rules


def _warn_over_passes(selection, functions, where, passes):
    """With several passes, the warning about --only/--skip/--function names that name nothing, over all of them."""
    if len(passes) > 1:
        from .engine import warn_unmatched
        from .rules import rule_set

        sets = [(p.rule,) if isinstance(p, HeadroomPass) else rule_set(p) for p in passes]
        warn_unmatched(selection or Selection(), functions, where, tuple(r for rules in sets for r in rules))


def _merge(first, second):
    """One FunctionReport per function from two passes: the chains of both; op counts from before the first pass
    to after the second (the second pass counts every op type the first left); the first pass's lint (the Neural
    Engine findings of the norm rewrites; the headroom pass changes constants and adds muls). A second pass that
    found nothing adds its reason to the function's note: the user asked for it."""
    by_name = {f.name: f for f in second}
    for f in first:
        later = by_name.get(f.name)
        if later is not None and not later.chains and later.note and later.note not in (f.note or ""):
            f.note = f"{f.note}; {later.note}" if f.note else later.note  # why the second pass found nothing
        if later is None or not later.chains:
            continue
        f.chains += later.chains
        if f.note and f.note.startswith("no "):  # the first pass's "no ... chain": the second found one
            f.note = None
        after = {t: counts[1] for t, counts in later.ops.items()}
        f.ops = {t: [f.ops.get(t, [0, 0])[0], after.get(t, 0)] for t in sorted(set(f.ops) | set(later.ops))}
    return first


def _analyse(package, units, verify, selection, passes, split_outputs=False, dry_run=False):
    """Parse and check the spec and the weights it refers to, then run the optimize pipeline on it, once per rule
    set in `passes` (the headroom pass runs on the program the first pass rewrote, so it sees the norms in their
    final form and measures its peaks there; a dry run rewrites a copy of the program for it): (function reports,
    the NewBlobs the rewrites added, to write with the package; its reader is open: the caller closes it)."""
    from .graph.stored_constants import check_blob_references
    from .graph.validate import validate_program
    from .package.weight_writer import NewBlobs

    load_spec(package)
    validate_program(package.spec, package.model_path)
    blobs = package.blob_reader()
    try:
        check_blob_references(package.spec, blobs)
        new_blobs = NewBlobs(blobs)
        functions = None
        spec = package.spec
        if dry_run and len(passes) > 1:  # the rewrites go into a copy of the whole program, which the next pass reads
            from .package.proto import Model_pb2

            spec = Model_pb2.Model()
            spec.CopyFrom(package.spec)
        for k, pass_rules in enumerate(passes):
            reader = blobs if k == 0 else new_blobs.reader_overlay()  # the weights the first pass added, as written
            reports = _optimize_spec()(
                spec, units, dry_run=dry_run, blobs=reader, verify=verify, validated=True, selection=selection,
                model_path=package.model_path, label=package.path, rules=_rule_set(pass_rules, spec, reader, package.path),
                new_blobs=new_blobs, lint=_lint_changes() if k == 0 else None, warn=len(passes) == 1,
                split_outputs=split_outputs and k == 0, scratch=spec is not package.spec,
            )
            functions = reports if functions is None else _merge(functions, reports)
        _warn_over_passes(selection, functions, package.path, passes)
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


def optimize(mlmodel, compute_units="CPU_AND_NE", verify: bool = True, report: bool = False, rules=None,
             headroom: bool = False, headroom_target: float = 2, inputs=None, seed: int = 0, scale: float = 1.0,
             split_outputs: bool = False):
    """Return a new `coremltools.models.MLModel` with every chain the rules match rewritten; with `report=True`,
    the pair `(model, Report)`.

    `compute_units` is the target the model is optimized for, as on the command line: `CPU_AND_NE` (the default,
    whatever the model was loaded with) lets every rule rewrite; with any other setting (a `ct.ComputeUnit` or
    its name) only the rules that pay there do (the LayerNorm rule, not the RMSNorm trick), and a UserWarning
    says which were held back. The returned model carries the setting. Works on
    Linux, where the returned model is spec-only (`skip_model_load`) like the input. `rules`: the rule set
    (default: the registry). A rewrite that would add a stored weight is left alone here (the weights folder is
    coremltools'); `optimize_package` writes it. `headroom` and its options: as for `optimize_package` (the
    audit runs on the program in memory: no saved package is needed); a stored weight it would scale is scaled by
    an inserted mul instead only where the rule can (else that stream is left alone with the reason).
    `split_outputs`: as for `optimize_package` (the returned model's description lists the parts).
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
    passes = [rules] + ([HeadroomPass(headroom_target, inputs, seed, scale)] if headroom else [])
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
        for k, pass_rules in enumerate(passes):
            reports = _optimize_spec()(spec, units, blobs=blobs, verify=verify, validated=True, model_path=source,
                                       rules=_rule_set(pass_rules, spec, blobs, source),
                                       lint=_lint_changes() if k == 0 else None, warn=len(passes) == 1,
                                       split_outputs=split_outputs and k == 0)
            result.functions = reports if k == 0 else _merge(result.functions, reports)
        _warn_over_passes(None, result.functions, source, passes)
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
