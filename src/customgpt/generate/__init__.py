"""Text generation: one engine that the CLI, the web app and the HTTP server all stream from.

Modules, bottom up (everything below is importable from ``customgpt.generate``):

* :mod:`~customgpt.generate.sampling`: :class:`SamplingParams` (every knob, validated on
  construction), the logits processors and :func:`sample`, a pure function from next-token
  logits to token ids.
* :mod:`~customgpt.generate.loop`: the token loop with the model's KV cache (a prefill, then
  one position per step, last-position logits only); :func:`generate_tokens` yields tokens
  one at a time for one prompt. :mod:`~customgpt.generate.cpu_decode`: the CPU's fast
  single-token step.
* :mod:`~customgpt.generate.stream`: :func:`stream_text` / :func:`generate_text`: text pieces
  (UTF-8 safe) with stop strings, and a :class:`GenerationResult` with counts, finish reason
  and speed; :func:`encode_prompt` encodes user text as plain text.
* :mod:`~customgpt.generate.batch`: :func:`generate_batch`, several prompts at once,
  left-padded with an attention mask, each row stopping on its own.
* :mod:`~customgpt.generate.chat`: :class:`ChatSession`, a conversation kept inside the
  context window.

Each request makes its own KV cache, so several generations may run on one model; the
model's weights are only read (on the CPU they are put once in their decode layout, see
``docs/generation.md``).
"""

from customgpt.generate.batch import generate_batch
from customgpt.generate.chat import ChatSession
from customgpt.generate.cpu_decode import CPU_DECODE_FAST_PATH, CPUDecodeStep, cpu_decode_unsupported
from customgpt.generate.loop import (
    CPU_TRANSPOSED_HEAD,
    FinishReason,
    GenerationError,
    TokenStep,
    check_prompt,
    generate_tokens,
    lm_head_for_generation,
    sampled_vocab_size,
    token_loop,
)
from customgpt.generate.sampling import (
    MAX_SEED,
    SamplingParams,
    apply_presence_frequency,
    apply_repetition_penalty,
    make_generator,
    min_p_filter,
    process_logits,
    sample,
    top_k_filter,
    top_p_filter,
)
from customgpt.generate.stream import (
    PLAIN_TEXT,
    GenerationResult,
    StopStringBuffer,
    TextStream,
    encode_prompt,
    generate_text,
    stream_text,
)

__all__ = [
    "CPU_DECODE_FAST_PATH",
    "CPU_TRANSPOSED_HEAD",
    "CPUDecodeStep",
    "MAX_SEED",
    "PLAIN_TEXT",
    "ChatSession",
    "FinishReason",
    "GenerationError",
    "GenerationResult",
    "SamplingParams",
    "StopStringBuffer",
    "TextStream",
    "TokenStep",
    "apply_presence_frequency",
    "apply_repetition_penalty",
    "check_prompt",
    "cpu_decode_unsupported",
    "encode_prompt",
    "generate_batch",
    "generate_text",
    "generate_tokens",
    "lm_head_for_generation",
    "make_generator",
    "min_p_filter",
    "process_logits",
    "sample",
    "sampled_vocab_size",
    "stream_text",
    "token_loop",
    "top_k_filter",
    "top_p_filter",
]
