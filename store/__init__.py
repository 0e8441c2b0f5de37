"""butter's sans-IO core and its LMDB backend.

    Cache(path).lookup(namespace, conversation) -> Hit | Miss
    Cache(path).record(namespace, conversation, reply)
"""
from .cache import Cache, default_db_path
from .model import Conversation, Hit, Miss, NodeRecord, StoredReply
from .tree import ServePolicy

__all__ = ["Cache", "Conversation", "Hit", "Miss", "NodeRecord", "ServePolicy", "StoredReply", "default_db_path"]
