"""Lint and split the LM head of public architectures, as a new user would: GPT-2, Qwen2, Gemma 2 and Llama built by
Hugging Face transformers from their configs (real vocabulary sizes, small hidden sizes, random weights),
converted with coremltools, then `mlopt lint`, `optimize` with and without `--split-outputs`, and `verify`.

    pip install transformers           # besides torch and coremltools; not needed by mlopt itself
    python examples/public_lm_heads.py [OUT_DIR [MODEL...]]

Prints one line per model and step. docs/rules.md (split_wide) quotes a run. Nothing here is tuned to the
models: each is converted the way coremltools' documentation shows (`ct.convert` of a traced module).
"""

import importlib.util
import os
import sys
import tempfile

import numpy as np

SEQ = 8
# name -> (transformers config class, model class, config, deployment target, compression)
MODELS = {
    "gpt2_ios17": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=50257, n_embd=64, n_layer=2, n_head=4, n_positions=64), "iOS17", None),
    "gpt2_ios15": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=50257, n_embd=64, n_layer=2, n_head=4, n_positions=64), "iOS15", None),
    "qwen2_ios18": ("Qwen2Config", "Qwen2ForCausalLM", dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64), "iOS18", None),
    "qwen2_ios18_palettized": ("Qwen2Config", "Qwen2ForCausalLM", dict(vocab_size=151936, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                               max_position_embeddings=64), "iOS18", "palettize4_grouped16"),
    "gemma2_ios18": ("Gemma2Config", "Gemma2ForCausalLM", dict(vocab_size=256000, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     max_position_embeddings=64, final_logit_softcapping=30.0, layer_types=["full_attention"] * 2),
                     "iOS18", None),  # full attention: coremltools 9 does not convert the sliding-window mask (new_ones)
    "llama_ios18": ("LlamaConfig", "LlamaForCausalLM", dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64), "iOS18", None),
}


def convert(name, path):
    import coremltools as ct
    import torch
    import transformers
    import transformers.masking_utils as masking

    # transformers 5 looks for packed sequences with torch.diff, which coremltools 9 does not convert; these
    # models take one unpacked sequence
    masking.find_packed_sequence_indices = lambda position_ids: None
    config_class, model_class, config, target, compression = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).eval()
    model.config._attn_implementation = "eager"

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(input_ids=ids, use_cache=False, return_dict=False)[0]

    ids = torch.randint(0, 1000, (1, SEQ), dtype=torch.int32)
    with torch.no_grad():
        traced = torch.jit.trace(Logits().eval(), ids, strict=False)
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="input_ids", shape=(1, SEQ), dtype=np.int32)],
                         outputs=[ct.TensorType(name="logits")], minimum_deployment_target=getattr(ct.target, target),
                         convert_to="mlprogram", skip_model_load=True)
    if compression == "palettize4_grouped16":
        import coremltools.optimize.coreml as cto

        mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
            nbits=4, mode="uniform", granularity="per_grouped_channel", group_size=16)))
    mlmodel.save(path)


def wide(report):
    return [f"{f.op_type} '{f.op}'" for f in report.findings if f.code == "dim-over-16384"]


def main(out_dir, names=None):
    from mlopt import lint, optimize_package
    from mlopt.analyses.verify import verify_packages
    from mlopt.package import read_package

    for name in names or MODELS:
        src = os.path.join(out_dir, f"{name}.mlpackage")
        convert(name, src)
        print(f"{name}: lint before: dim-over-16384 on {', '.join(wide(lint(src))) or 'nothing'}")
        for flag in (False, True):
            out = os.path.join(out_dir, f"{name}{'.split' if flag else '.opt'}.mlpackage")
            report = optimize_package(src, out, split_outputs=flag, force=True)
            [head] = [c for f in report.functions for c in f.chains if c.rule == "split_wide"]
            outputs = [o.name for o in read_package(out).spec.description.output]
            checked = verify_packages(src, out)
            print(f"  optimize{' --split-outputs' if flag else ''}: head {head.status} ({head.summary if head.reason is None else head.reason}); "
                  f"outputs {', '.join(outputs)}; lint after: dim-over-16384 on {', '.join(wide(lint(out))) or 'nothing'}; "
                  f"verify {'passes' if checked.passed else 'FAILS'}")


if __name__ == "__main__":
    if importlib.util.find_spec("transformers") is None:
        sys.exit("this example needs transformers (pip install transformers) besides torch and coremltools")
    if len(sys.argv) > 1:  # OUT_DIR [MODEL...]
        os.makedirs(sys.argv[1], exist_ok=True)
        main(sys.argv[1], sys.argv[2:])
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(folder)
