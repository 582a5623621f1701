"""`mlopt optimize IN OUT`, or `mlopt optimize IN... --out-dir DIR` for many models: rewrite RMSNorm chains."""

from ..compute_units import COMPUTE_UNITS
from ..errors import BadInputError, CannotVerify
from .output import add_verbosity


def add_parser(commands):
    p = commands.add_parser(
        "optimize",
        help="rewrite the chains mlopt's rules match into ops the Neural Engine runs well",
        description="Rewrite every chain of IN that one of mlopt's rules matches (docs/rules.md) and save OUT.",
    )
    p.add_argument(
        "paths",
        metavar="PATH",
        nargs="+",
        help="IN OUT: the .mlpackage to optimize (never modified) and where to write the result; with --out-dir, "
        "any number of packages and folders (searched recursively) to optimize",
    )
    p.add_argument("--out-dir", metavar="DIR", help="batch mode: write every optimized model under DIR, mirroring folders")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="batch mode: worker processes (default: 1)")
    p.add_argument(
        "--compute-units",
        choices=COMPUTE_UNITS,
        type=str.upper,
        default="CPU_AND_NE",
        help="the compute units the model targets; each rule rewrites only for the units it pays for and reports its "
        "other chains as matched (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT (OUT may then be IN)")
    p.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical self-check of each rewrite")
    p.add_argument(
        "--link",
        action="store_true",
        help="hard-link the weights (and other unchanged files) instead of copying them; safe because packages are "
        "never edited in place, but an in-place edit of one would change both",
    )
    p.add_argument(
        "--split-outputs",
        action="store_true",
        help="where a split wide head is a function output, return its chunks as separate outputs <output>_0 ... "
        "<output>_{k-1} instead of concatenating them (changes the model's interface; the report says how to "
        "reassemble; docs/rules.md)",
    )
    p.add_argument("--only", action="append", metavar="NAME", help="rewrite only rule NAME or the chain anchored at op NAME (repeatable; names as the report shows them)")
    p.add_argument("--skip", action="append", metavar="NAME", help="leave rule NAME or the chain anchored at op NAME alone (repeatable)")
    p.add_argument("--function", action="append", metavar="NAME", dest="functions", help="optimize only function NAME (repeatable)")
    p.add_argument("--skip-existing", action="store_true", help="batch mode: leave models whose output exists alone (listed as skipped)")
    p.add_argument("--audit", action="store_true", help="audit IN and the OUT written (mlopt audit, same inputs) and report "
                   "fp16 headroom and findings before and after")
    p.add_argument("--headroom", action="store_true", help="also scale residual streams by a power of two so that "
                   "their float64 peak (audited after the other rules rewrote the program) leaves fp16 headroom "
                   "(docs/headroom.md); runs after the other rules")
    p.add_argument("--headroom-target", type=float, default=2.0, metavar="BITS",
                   help="--headroom: the bits below fp16's 65504 a stream's peak must leave (default: %(default)g)")
    p.add_argument("--inputs", metavar="NPZ", help="--headroom/--audit: the inputs the audit runs IN (and OUT) on "
                   "(default: seeded random inputs, as mlopt audit draws them)")
    p.add_argument("--seed", type=int, default=0, help="--headroom/--audit: seed of the random inputs (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="--headroom/--audit: standard deviation of random float "
                   "inputs (default: %(default)g)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    add_verbosity(p)


def run(args):
    from ..api import optimize_package

    options = dict(
        compute_units=args.compute_units, force=args.force, dry_run=args.dry_run, verify=not args.no_verify,
        link=args.link, only=args.only, skip=args.skip or (), functions=args.functions,
        split_outputs=args.split_outputs,
    )
    audit_options = dict(inputs_path=args.inputs, seed=args.seed, scale=args.scale)
    if args.headroom:
        options.update(headroom=True, headroom_target=args.headroom_target, inputs=args.inputs, seed=args.seed, scale=args.scale)
    if args.out_dir is not None:
        if args.headroom:
            raise BadInputError(args.out_dir, "--headroom is for one model (mlopt optimize IN OUT --headroom): its peaks come from that model's audit")
        if args.audit:
            raise BadInputError(args.out_dir, "--audit is for one model (mlopt optimize IN OUT --audit); run mlopt audit on each output")
        return _batch(args, options)
    if args.jobs != 1:
        raise BadInputError(args.paths[0], "--jobs runs several models at once: it needs --out-dir DIR (batch mode)")
    if args.skip_existing:
        raise BadInputError(args.paths[0], "--skip-existing is for batch mode (--out-dir DIR)")
    if len(args.paths) > 2:
        raise BadInputError(args.paths[0], f"{len(args.paths)} paths given: several inputs need --out-dir DIR")
    input_path, output_path = args.paths[0], (args.paths[1] if len(args.paths) == 2 else None)
    if output_path is None and not args.dry_run:
        raise BadInputError(input_path, "no output path given (mlopt optimize IN OUT, or --dry-run)")
    if args.audit and args.dry_run:
        raise BadInputError(input_path, "--audit audits the output written: it cannot be combined with --dry-run")
    report = optimize_package(input_path, output_path, **options)
    if args.audit:
        from ..analyses.audit import headroom_change

        try:
            report.audit = headroom_change(input_path, output_path, **audit_options)
        except CannotVerify as e:  # OUT is written and proved: the audit's limit is no failure of the optimize run
            report.audit = {"skipped": f"{e.path}: {e.problem}"}
    return report, 0


def _batch(args, options):
    from .. import batch  # imported here, not at start-up: see mlopt/__init__.py
    from .progress import progress_reporter

    if args.jobs < 1:
        raise BadInputError(args.out_dir, f"--jobs {args.jobs}: needs at least 1 worker")
    items = batch.plan(args.paths, args.out_dir, skip_existing=args.skip_existing)
    progress = progress_reporter(len(items), quiet=args.quiet)
    try:
        result = batch.run(items, jobs=args.jobs, progress=progress, **options)
    finally:
        progress.close()
    return result, result.exit_code
