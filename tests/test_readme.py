"""README's tour quotes real output: each quoted block must be what the command prints today."""

import os
import re
import subprocess
import sys

from conftest import ROOT

README_OUT = "/tmp/decoder_ane.mlpackage"  # where README's first command writes


def plain_blocks():
    """README's ``` blocks without a language: the outputs it quotes."""
    blocks, current, language = [], None, ""
    with open(os.path.join(ROOT, "README.md")) as f:
        for line in f.read().splitlines():
            if line.startswith("```") and current is None:
                current, language = [], line[3:]
            elif line == "```":
                if not language:
                    blocks.append("\n".join(current))
                current = None
            elif current is not None:
                current.append(line)
    return blocks


def quoted_blocks():
    """The quoted outputs that start with their command line, by that line (up to its parenthesis)."""
    return {block.splitlines()[0].split(" (")[0]: block for block in plain_blocks() if block.startswith("mlopt ")}


def mlopt(*argv):
    result = subprocess.run([sys.executable, "-m", "mlopt", *argv], cwd=ROOT, capture_output=True, text=True)
    return result.returncode, result.stdout


def test_the_tour_quotes_what_the_commands_print(tmp_path):
    blocks = quoted_blocks()
    out = str(tmp_path / "decoder_ane.mlpackage")
    optimize_key = "mlopt optimize fixtures/decoder_fp16_ios17.mlpackage"
    code, printed = mlopt("optimize", "fixtures/decoder_fp16_ios17.mlpackage", out, "--force")
    assert code == 0
    quoted = blocks[optimize_key].replace(README_OUT, out)
    # the copy method is the file system's (clonefile on APFS, copy_file_range on Linux): the line names it
    strip = lambda text: re.sub(r"copied byte for byte: [a-z_]+\)", "copied byte for byte: METHOD)", text)
    assert strip(printed.rstrip("\n")) == strip(quoted)

    verify_key = f"mlopt verify fixtures/decoder_fp16_ios17.mlpackage {README_OUT}"
    code, printed = mlopt("verify", "fixtures/decoder_fp16_ios17.mlpackage", out)
    assert code == 0 and printed.rstrip("\n") == blocks[verify_key].replace(README_OUT, out)

    lint_key = "mlopt lint fixtures/lint/wide_linear_fp16_ios17.mlpackage"
    code, printed = mlopt("lint", "fixtures/lint/wide_linear_fp16_ios17.mlpackage")
    assert code == 1 and printed.rstrip("\n") == blocks[lint_key]


def test_the_inspect_excerpt_is_the_start_of_what_inspect_prints():
    excerpt = quoted_blocks()["mlopt inspect fixtures/near_misses_fp16_ios17.mlpackage"]
    code, printed = mlopt("inspect", "fixtures/near_misses_fp16_ios17.mlpackage")
    assert code == 0 and printed.startswith(excerpt.split("\n  ...")[0])


def test_the_audit_tour_quotes_what_audit_prints(tmp_path):
    model, inputs = "fixtures/audit/gemma_residual_fp16_ios17.mlpackage", "fixtures/audit/gemma_residual_fp16_ios17.inputs.npz"
    (quoted,) = [b for b in plain_blocks() if b.startswith(f"{model}: ")]
    code, printed = mlopt("audit", model, "--inputs", inputs, "--top", "3")
    assert code == 1 and printed.rstrip("\n") == quoted

    (excerpt,) = [b for b in plain_blocks() if b.startswith("  fp16 audit (mlopt audit, same inputs):")]
    code, printed = mlopt("optimize", model, str(tmp_path / "out.mlpackage"), "--audit")
    assert code == 0 and excerpt + "\n" in printed


def test_the_split_outputs_tour_quotes_what_optimize_prints(tmp_path):
    model = "fixtures/wide/llama_32000_fp16_ios17.mlpackage"
    quoted = quoted_blocks()[f"mlopt optimize {model}"]
    out = str(tmp_path / "llama_split.mlpackage")
    code, printed = mlopt("optimize", model, out, "--force", "--split-outputs")
    assert code == 0
    assert printed.rstrip("\n") == quoted.replace("/tmp/llama_split.mlpackage", out)
    code, printed = mlopt("lint", out)
    assert code == 0 and "no finding in 2 ops" in printed


def test_the_headroom_excerpt_is_what_optimize_prints(tmp_path):
    model, inputs = "fixtures/audit/gemma_residual_fp16_ios17.mlpackage", "fixtures/audit/gemma_residual_fp16_ios17.inputs.npz"
    (excerpt,) = [b for b in plain_blocks() if b.startswith("    rewritten      x_11_cast_fp16")]
    code, printed = mlopt("optimize", model, str(tmp_path / "gemma_safe.mlpackage"), "--inputs", inputs, "--headroom", "--audit")
    assert code == 0
    stream, audit = excerpt.split("\n  fp16 audit")
    assert stream + "\n" in printed and "  fp16 audit" + audit + "\n" in printed
