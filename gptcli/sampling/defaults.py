"""The sampling defaults, written once: SamplingParams, every command's options and the
explorer read them here. No imports, so a command's signature can use them without
slowing `--help`."""

TEMPERATURE = 0.8
TOP_K = 40  # 0: off
TOP_P = 0.95  # 1: off
MIN_P = 0.05  # 0: off
REPEAT_PENALTY = 1.0  # 1: off
REPEAT_LAST_N = 64  # tokens the repeat penalty looks back over

DEFAULTS = {
    "temperature": TEMPERATURE,
    "top_k": TOP_K,
    "top_p": TOP_P,
    "min_p": MIN_P,
    "repeat_penalty": REPEAT_PENALTY,
}
