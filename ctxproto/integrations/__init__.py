"""Adapters that put ctxproto inside other frameworks.

Each adapter is a thin surface: it converts the framework's messages and
documents to the context model and back, and calls the same pipeline, stages,
stores and backends as the rest of ctxproto. Import the module of the
framework you use; each needs its extra:

- ``ctxproto.integrations.langchain`` (``pip install 'ctxproto[langchain]'``)
- ``ctxproto.integrations.llamaindex`` (``pip install 'ctxproto[llamaindex]'``)

Nothing here is imported by ``import ctxproto``.
"""
