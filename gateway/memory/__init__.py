"""Agent memory and knowledge: the seed's context and knowledge system (上下文和知识系统).

This is the design's ``gateway/context`` folder, named ``gateway/memory`` because
``gateway/context.py`` (the per-call ``CallContext``) already takes that name.

- ``store``: the vector store adapter (Qdrant Edge embedded, qdrant-client for a server)
- ``embed``: embedders (local int8 MiniLM ONNX, OpenAI-compatible, hashing)
- ``manager``: the ``ContextManager`` and its memory types; ``volatile``: short-term / working
- ``knowledge``: knowledge base ingestion; ``rag``: the RAG pipeline
- ``access``: policy checks (``context/read``, ``context/write``, ``knowledge/search``)
- ``builtin``: the ``memory`` and ``knowledge`` built-in MCP upstreams
- ``build``: everything above from the ``[context]`` config section
"""
