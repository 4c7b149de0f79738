"""RAG retrieval: a knowledge base on a vector store, MMR, budget packing, reordering."""

from ctxproto.retrieval.knowledge_base import KnowledgeBase
from ctxproto.retrieval.mmr import mmr_select
from ctxproto.retrieval.packing import long_context_reorder, pack_to_budget
from ctxproto.retrieval.sources import folder_document_id, is_text_file, read_documents

__all__ = [
    "KnowledgeBase",
    "folder_document_id",
    "is_text_file",
    "long_context_reorder",
    "mmr_select",
    "pack_to_budget",
    "read_documents",
]
