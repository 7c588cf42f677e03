"""An OpenAI-compatible HTTP server with batched decoding (``customgpt serve``).

Needs the ``serve`` extra (FastAPI and uvicorn): ``pip install 'customgpt[serve]'``.

* :func:`~customgpt.serve.app.create_app` builds the FastAPI app around a model;
* :class:`~customgpt.serve.engine.BatchEngine` decodes concurrent requests together in one
  worker thread.
"""

from customgpt.serve.app import APIError, ServerConfig, create_app
from customgpt.serve.engine import BatchEngine, GenerationJob, QueueFullError

__all__ = ["APIError", "BatchEngine", "GenerationJob", "QueueFullError", "ServerConfig", "create_app"]
