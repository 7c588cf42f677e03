"""Special ids and values, defined once for the whole package."""

#: GPT-2's ``<|endoftext|>`` token id (the last id of its 50,257-token vocabulary).
EOT_ID = 50256
EOT_TEXT = "<|endoftext|>"
#: GPT-2 vocabulary size.
GPT2_VOCAB_SIZE = 50257
#: Targets with this value are ignored by the losses (PyTorch's cross-entropy default).
IGNORE_INDEX = -100
