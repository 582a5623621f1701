"""The Neural Engine limits `mlopt lint` checks, as data: each code, the limit, how strong the evidence is, and the
public sources it rests on (docs/lint.md explains each one in prose).

Apple documents none of these. A coremltools maintainer says there is no static list, because what runs on the
Neural Engine "changes based on device generation, operating system version, tensor sizes etc." (apple/coremltools
issue 1780); Xcode's performance report on the device is the only ground truth. Everything here is what people
outside Apple have measured or reverse-engineered, or what a maintainer said in an issue, so lint reports risks,
never verdicts. Every URL below was read when the limit was added; a limit without a source is not in this table.
"""

from dataclasses import dataclass

MAX_DIM = 16384  # a tensor dimension above this is reported to keep an op off the Neural Engine
MAX_RANK = 5  # Core ML itself supports tensors of rank at most 5
RISK = "may run off the Neural Engine"


@dataclass(frozen=True)
class Source:
    title: str  # what the source is and what it says, in a few words
    url: str
    kind: str  # "Apple documentation", "coremltools maintainer", "community measurement", "community report", ...

    def to_dict(self):
        return {"title": self.title, "url": self.url, "kind": self.kind}


@dataclass(frozen=True)
class Limit:
    code: str
    limit: str  # the limit, as a phrase: "every dimension at most 16384"
    evidence: str  # how strong the evidence is, in a few words
    sources: tuple  # of Source

    def to_dict(self):
        return {"limit": self.limit, "evidence": self.evidence, "sources": [s.to_dict() for s in self.sources]}


ISSUE_1780 = Source(
    "apple/coremltools issue 1780: a maintainer: no static list of what runs on the Neural Engine; RNN/LSTM do not",
    "https://github.com/apple/coremltools/issues/1780",
    "coremltools maintainer",
)
ANEMLL_LLAMA = Source(
    "ANEMLL llama_model.py: 'ANE tensors dimension size is limited to 16384'; the LM head split 8 ways",
    "https://github.com/Anemll/Anemll/blob/6ecb10d7dfe90533af13ac23c825ca76aab0c56e/anemll/models/llama_model.py",
    "community report",
)
ANEMLL_QWEN = Source(
    "ANEMLL qwen_model.py: the LM head of a 151936-token vocabulary split 16 ways",
    "https://github.com/Anemll/Anemll/blob/6ecb10d7dfe90533af13ac23c825ca76aab0c56e/anemll/models/qwen_model.py",
    "community report",
)
RUSTANE_13 = Source(
    "ncdrone/rustane issue 13: ANE compile passes at a width of exactly 16384 and fails at 17920 (M3 Ultra, macOS 26.3)",
    "https://github.com/ncdrone/rustane/issues/13",
    "community measurement",
)
SMPANARO_NOTES = Source(
    "smpanaro/more-ane-transformers NOTES.md: an lm_head split to get under 16384; gather stays off the Neural Engine "
    "at any size; dynamic shapes and dynamic offsets move work to the CPU",
    "https://github.com/smpanaro/more-ane-transformers/blob/14ef84fab12b8df11fd53fa0ba261ad451f91b89/src/experiments/NOTES.md",
    "community measurement",
)
SMPANARO_EMBEDDING = Source(
    "smpanaro/more-ane-transformers split_tensor_embedding.py: GPT-2's 50257-row nn.Embedding does not run on the "
    "Neural Engine",
    "https://github.com/smpanaro/more-ane-transformers/blob/14ef84fab12b8df11fd53fa0ba261ad451f91b89/src/experiments/split_tensor_embedding.py",
    "community measurement",
)
EXECUTORCH_SPLIT = Source(
    "executorch Core ML Llama example: linears split into pieces of a target size (SplitLinearModule)",
    "https://github.com/pytorch/executorch/blob/42669242fd702cb12662548704b3f5fdff61e9e4/examples/apple/coreml/llama/utils.py",
    "community report",
)
ISSUE_1723 = Source(
    "apple/coremltools issue 1723: a maintainer: Core ML does not support tensors with a rank greater than five",
    "https://github.com/apple/coremltools/issues/1723",
    "coremltools maintainer",
)
ISSUE_2536 = Source(
    "apple/coremltools issue 2536: the reply: the Core ML framework does not support tensors of rank > 5",
    "https://github.com/apple/coremltools/issues/2536",
    "coremltools issue",
)
COREMLTOOLS_RANK_CHECK = Source(
    "coremltools program.py, _check_invalid_tensor_rank: coremltools refuses to save a tensor of rank 6 or more",
    "https://github.com/apple/coremltools/blob/main/coremltools/converters/mil/mil/program.py",
    "coremltools source",
)
TINYGRAD_ANE = Source(
    "tinygrad extra/accel/ane/README.md: the Neural Engine works on 5-D tensors of three data "
    "types, UInt8, Int8 and Float16",
    "https://github.com/tinygrad/tinygrad/blob/0459b03fb25987d490dd4eb040f619dcff379092/extra/accel/ane/README.md",
    "reverse engineering",
)
TYPED_EXECUTION = Source(
    "coremltools guide, Typed Execution Workflow Example: a float 32 typed model executes on the GPU and CPU",
    "https://apple.github.io/coremltools/docs-guides/source/typed-execution-example.html",
    "Apple documentation",
)
HOLLANCE_16BIT = Source(
    "hollance/neural-engine docs/16-bit.md: the Neural Engine appears to use float16 for everything",
    "https://github.com/hollance/neural-engine/blob/master/docs/16-bit.md",
    "community report",
)
HOLLANCE_LAYERS = Source(
    "hollance/neural-engine docs/unsupported-layers.md: gather and RNN layers among the layers known not to run on "
    "the Neural Engine",
    "https://github.com/hollance/neural-engine/blob/master/docs/unsupported-layers.md",
    "community report",
)
ISSUE_1103 = Source(
    "apple/coremltools issue 1103: a user measures gather running on the CPU",
    "https://github.com/apple/coremltools/issues/1103",
    "community report",
)
ISSUE_1764 = Source(
    "apple/coremltools issue 1764: a flexible input shape keeps a model on the CPU; fixed, it uses the Neural Engine",
    "https://github.com/apple/coremltools/issues/1764",
    "community measurement",
)
ISSUE_2370 = Source(
    "apple/coremltools issue 2370: a RangeDim input runs on the Neural Engine only at its default shape",
    "https://github.com/apple/coremltools/issues/2370",
    "community measurement",
)
ISSUE_337 = Source(
    "apple/coremltools issue 337: LSTMs run on the CPU (BNNS), not the Neural Engine",
    "https://github.com/apple/coremltools/issues/337",
    "community measurement",
)
ISSUE_2208 = Source(
    "apple/coremltools issue 2208: a user cannot get while_loop to run on the Neural Engine (nor the GPU)",
    "https://github.com/apple/coremltools/issues/2208",
    "community report",
)

LIMITS = {
    limit.code: limit
    for limit in (
        Limit(
            "dim-over-16384",
            f"every tensor dimension at most {MAX_DIM}",
            "community reports and one measurement of the compiler; the usual fix is splitting (ANEMLL, executorch)",
            (ANEMLL_LLAMA, ANEMLL_QWEN, RUSTANE_13, SMPANARO_NOTES, EXECUTORCH_SPLIT),
        ),
        Limit(
            "rank-over-5",
            f"tensor rank at most {MAX_RANK}",
            "coremltools maintainers: a limit of Core ML itself, so the model may not compile at all",
            (ISSUE_1723, ISSUE_2536, COREMLTOOLS_RANK_CHECK, TINYGRAD_ANE),
        ),
        Limit(
            "int-arith",
            "no arithmetic on integer tensors wider than 8 bits",
            "reverse engineering of the hardware's data types; no measurement of single integer ops found",
            (TINYGRAD_ANE,),
        ),
        Limit(
            "large-gather",
            f"a gather table at most {MAX_DIM} rows along the gathered axis",
            "community measurements: gather from a vocabulary-sized table stays off the Neural Engine",
            (SMPANARO_EMBEDDING, SMPANARO_NOTES, ISSUE_1103),
        ),
        Limit(
            "dynamic-shape",
            "every tensor size known when the model is compiled",
            "community measurements on flexible (range) input shapes",
            (ISSUE_1764, ISSUE_2370, SMPANARO_NOTES),
        ),
        Limit(
            "fp32",
            "float16 computation",
            "Apple documentation for fp32 typed models; community reports for single fp32 ops",
            (TYPED_EXECUTION, TINYGRAD_ANE, HOLLANCE_16BIT),
        ),
        Limit(
            "unsupported-op",
            "an op type the Neural Engine is reported to run",
            "a coremltools maintainer for RNNs; community reports for the others",
            (ISSUE_1780, ISSUE_337, HOLLANCE_LAYERS, SMPANARO_NOTES, ISSUE_1103, ISSUE_2208),
        ),
    )
}

# Integer types the Neural Engine is reported to hold (TINYGRAD_ANE): arithmetic on other integer types is a risk.
ANE_INTEGER_TYPES = ("INT8", "UINT8")

# Ops that compute on their operands' values (arithmetic, comparison, selection, reduction): on integer operands
# they are integer arithmetic. Casts, shape ops and index inputs (gather's indices) are not.
ARITHMETIC_OPS = frozenset({
    "add", "sub", "mul", "real_div", "floor_div", "mod", "pow", "maximum", "minimum",
    "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
    "abs", "sign", "square", "clip", "select", "cumsum", "matmul", "linear",
    "reduce_sum", "reduce_prod", "reduce_max", "reduce_min", "reduce_mean", "reduce_sum_square",
    "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum", "reduce_log_sum_exp",
})

# Gathers: op type -> the input holding the table (what large-gather measures).
GATHER_OPS = {"gather": "x", "gather_nd": "x", "gather_along_axis": "x"}

# Op types reported not to run on the Neural Engine at all: type -> (what it is, who reports what, its sources).
_RNN = "a coremltools maintainer: RNNs are not supported on the Neural Engine"
_GATHER = "reported off the Neural Engine whatever the table size"
UNSUPPORTED_OPS = {
    "lstm": ("an LSTM", _RNN, (ISSUE_1780, ISSUE_337, HOLLANCE_LAYERS)),
    "gru": ("a GRU", _RNN, (ISSUE_1780, HOLLANCE_LAYERS)),
    "rnn": ("an RNN", _RNN, (ISSUE_1780, HOLLANCE_LAYERS)),
    "gather": ("a gather", _GATHER, (HOLLANCE_LAYERS, SMPANARO_NOTES, ISSUE_1103)),
    "gather_nd": ("a gather", _GATHER, (HOLLANCE_LAYERS, SMPANARO_NOTES, ISSUE_1103)),
    "gather_along_axis": ("a gather", _GATHER, (HOLLANCE_LAYERS, ISSUE_1103)),
    "while_loop": ("a while loop", "one user report: no success getting it onto the Neural Engine", (ISSUE_2208,)),
}

PLACEMENT_NOTE = (
    "findings are risks, not placements: Apple documents no Neural Engine limits (coremltools issue 1780), and an "
    "op with no finding may still run elsewhere; Xcode's performance report on the device is the ground truth"
)
