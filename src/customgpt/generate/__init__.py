"""Text generation: one engine that the CLI, the web app and the HTTP server all stream from.

Everything is importable from ``customgpt.generate`` except the CPU switches, which are set on
their modules (``cpu_decode.CPU_DECODE_FAST_PATH``, ``loop.CPU_TRANSPOSED_HEAD``);
``docs/generation.md`` says which module holds what and the rules every request follows.
"""

from customgpt.generate.batch import generate_batch
from customgpt.generate.chat import ChatSession
from customgpt.generate.cpu_decode import CPUDecodeStep, cpu_decode_unsupported
from customgpt.generate.loop import (
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
    make_generator,
    process_logits,
    sample,
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
    "check_prompt",
    "cpu_decode_unsupported",
    "encode_prompt",
    "generate_batch",
    "generate_text",
    "generate_tokens",
    "lm_head_for_generation",
    "make_generator",
    "process_logits",
    "sample",
    "sampled_vocab_size",
    "stream_text",
    "token_loop",
]
