"""customgpt: GPT-2 written from scratch in PyTorch.

The core library imports quickly: heavy or optional pieces (tokenizer engines, the hub
client, plotting) are imported where they are used.
"""

from customgpt.config import GPTConfig, list_presets
from customgpt.errors import CustomGPTError

__version__ = "0.1.0"

__all__ = ["GPTConfig", "CustomGPTError", "list_presets", "__version__"]
