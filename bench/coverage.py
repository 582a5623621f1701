"""Coverage of real norm implementations: for every package of the three fixture sets, rewritten or not, and the
error.

    python bench/coverage.py [real|converters|layernorm|coreml_norms|fp16|headroom ...]     # a markdown table per set (default: all)

- `real`: RMSNorm implementations from model code converted from PyTorch (fixtures/real/, rule rms_norm);
- `converters`: RMSNorm spellings of other converters and hand-written MIL (fixtures/converters/, rule rms_norm;
  the L2 forms and the trick itself must be left alone);
- `layernorm`: decomposed LayerNorms (fixtures/layernorm/, rule layer_norm);
- `coreml_norms`: the LayerNorm and InstanceNorm programs of coremltools' own fusion tests, saved unfused
  (fixtures/coreml_norms/, rules layer_norm and instance_norm; a row per test variant, its kind first);
- `fp16`: attention masks whose sentinel fp16 cannot hold (fixtures/fp16/, rule finite_mask; a cell counts masks),
  then a second table: `mlopt audit` before and after `mlopt optimize` (default inputs) for those packages and the
  masks of fixtures/audit/ - the issue's "a finding before the rewrite, none after".
- `headroom`: residual streams that overflow fp16 (fixtures/headroom/, `optimize --headroom` on each fixture's
  inputs, rule fp16_headroom; a cell counts streams; healthy streams and a head reading the stream are negatives).

Each cell: chains rewritten by the set's rule / the norms the model code holds (expected.json, written from the
code, not by mlopt) over the opsets the packages were built for, the worst self-check error of a rewrite against
the rule's float64 reference, and whether `verify` (original vs optimized model, interpreter, random inputs)
passed. A negative (nothing to rewrite) reads "left alone" when the rule rewrote nothing there.
"""

import json
import os
import sys
import tempfile
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
PRECISIONS = ("fp16", "fp32", "mixed")


def _precision(name):
    return next((p for p in PRECISIONS if f"_{p}_" in name), "fp16")


def _family(name):
    """The name without its precision and target: `cohere_qk_norm_mixed_sub16_ios17` -> `cohere_qk_norm`."""
    return name.split(f"_{_precision(name)}_")[0]


# set -> (rule, expected.json entry -> (family, precision, norms to rewrite, negative))
SETS = {
    "real": ("rms_norm", lambda name, e: (e["implementation"], _precision(name), e["norms"], e["negative"])),
    "converters": ("rms_norm", lambda name, e: (
        f"{e['form']}: {_family(name)}", e["dtype"], e["norms"] if e["expect"] == "rewrite" else 0, e["expect"] != "rewrite")),
    "layernorm": ("layer_norm", lambda name, e: (
        e["implementation"], _precision(name), e["layer_norms"], e["negative"] or e["layer_norms"] == 0)),
    "coreml_norms": (("layer_norm", "instance_norm"), lambda name, e: (
        f"{e['kind'] if e['expect'] == 'rewrite' else 'no norm'}: {_family(name)}", e["dtype"], e["norms"],
        e["expect"] != "rewrite")),
    "fp16": ("finite_mask", lambda name, e: (e["implementation"], _precision(name), e["masks"], e["negative"])),
    "headroom": ("fp16_headroom", lambda name, e: (
        _family(name), _precision(name), int(e["overflows"] and "head_on_stream" not in name),
        not e["overflows"] or "head_on_stream" in name)),
}
# set -> (folder, package name) -> optimize_package options besides the defaults
OPTIONS = {"headroom": lambda folder, name: dict(headroom=True, inputs=os.path.join(folder, f"{name}.inputs.npz"))}


def table(set_name):
    from mlopt import optimize_package
    from mlopt.analyses.verify import verify_packages

    rule, read = SETS[set_name]
    rules = (rule,) if isinstance(rule, str) else rule
    folder = os.path.join(FIXTURES, set_name)
    with open(os.path.join(folder, "expected.json")) as f:
        expected = json.load(f)
    cells = defaultdict(lambda: dict(rewritten=0, norms=0, error=0.0, verified=True, targets=[], negative=False))
    with tempfile.TemporaryDirectory() as tmp:
        for name, info in sorted(expected.items()):
            family, precision, norms, negative = read(name, info)
            src, out = os.path.join(folder, f"{name}.mlpackage"), os.path.join(tmp, f"{name}.mlpackage")
            report = optimize_package(src, out, **OPTIONS.get(set_name, lambda *_: {})(folder, name))
            chains = [c for f in report.functions for c in f.chains if c.rule in rules and c.status == "rewritten"]
            cell = cells[(family, precision)]
            cell["rewritten"] += len(chains)
            cell["norms"] += norms
            cell["targets"].append(name.rsplit("_", 1)[-1])
            cell["error"] = max([cell["error"], *(c.error for c in chains if c.error is not None)])
            cell["verified"] &= verify_packages(src, out).passed
            cell["negative"] = negative
    lines = [f"{set_name} (rule{'s' if len(rules) > 1 else ''} {', '.join(rules)}):", "", "| implementation | fp16 | fp32 | mixed precision |", "|---|---|---|---|"]
    families = sorted({k for k, _ in cells}, key=lambda k: (any(cells[(k, p)]["negative"] for p in PRECISIONS if (k, p) in cells), k))
    for family in families:
        row = [family]
        for precision in PRECISIONS:
            c = cells.get((family, precision))
            if c is None:
                row.append("-")
                continue
            targets = "+".join(sorted(set(c["targets"])))
            check = "verified" if c["verified"] else "VERIFY FAILED"
            if c["negative"] and c["rewritten"] == 0:
                row.append(f"left alone ({targets}){'' if c['verified'] else ' VERIFY FAILED'}")
            else:
                row.append(f"{c['rewritten']}/{c['norms']} rewritten ({targets}), error {c['error']:.1e}, {check}")
        lines.append("| " + " | ".join(row) + " |")
    total = sum(c["rewritten"] for c in cells.values() if not c["negative"])
    wanted = sum(c["norms"] for c in cells.values())
    untouched = all(c["rewritten"] == 0 for c in cells.values() if c["negative"])
    lines.append(f"\n{total}/{wanted} chains rewritten in {len(expected)} packages; negatives untouched: {untouched}")
    return "\n".join(lines)


AUDIT_MASKS = ("mask_1e9_fp16_ios17", "mask_f32min_fp16_ios17", "mask_neginf_fp16_ios17")  # fixtures/audit/
STACKED_MASKS = ("t5_input_mask_fp16_ios17", "gpt2_eager_mask_fp16_ios17")  # fixtures/hf_input_masks/: a second add


def audit_table():
    """mlopt audit of every fp16-set package, the masks of fixtures/audit and the stacked masks of
    fixtures/hf_input_masks, before and after mlopt optimize."""
    from mlopt import optimize_package
    from mlopt.analyses.audit import audit_package

    with open(os.path.join(FIXTURES, "fp16", "expected.json")) as f:
        packages = [("fp16", name) for name in sorted(json.load(f))] + [("audit", name) for name in AUDIT_MASKS]
        packages += [("hf_input_masks", name) for name in STACKED_MASKS]
    lines = ["fp16 audit (mlopt audit before and after mlopt optimize, default inputs):", "",
             "| package | audit before | audit after | rows masked entirely (after) | finite_mask |", "|---|---|---|---|---|"]
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for folder, name in packages:
            src, out = os.path.join(FIXTURES, folder, f"{name}.mlpackage"), os.path.join(tmp, f"{name}.mlpackage")
            before = audit_package(src)
            report = optimize_package(src, out)
            after = audit_package(out)
            rewritten = sum(c.rule == "finite_mask" and c.status == "rewritten" for f in report.functions for c in f.chains)
            masked = sum(m.rows for m in after.masked)
            lines.append(f"| {folder}/{name} | {_verdict(before)} | {_verdict(after)} | {masked or '-'} | "
                         f"{f'{rewritten} rewritten' if rewritten else 'nothing to rewrite'} |")
            done += after.passed
    lines.append(f"\n{done}/{len(packages)} packages audit-clean after the rewrite")
    return "\n".join(lines)


def _verdict(report):
    if report.passed:
        return "no finding"
    counts = {}
    for f in report.findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return f"{len(report.findings)} finding{'s' * (len(report.findings) != 1)} (" + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) + ")"


def main(argv):
    for set_name in argv or SETS:
        print(table(set_name) + "\n")
        if set_name == "fp16":
            print(audit_table() + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
