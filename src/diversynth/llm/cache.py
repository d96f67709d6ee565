"""A disk cache of LLM answers keyed by (backend, model, messages, sampling parameters).

SQLite from the standard library: atomic commits and safe concurrent readers, and values
are plain text (no pickles, unlike most Python cache libraries).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any


class AnswerCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT)")
        self._db.commit()

    @staticmethod
    def key(backend: str, model: str, fields: dict[str, Any]) -> str:
        payload = json.dumps({"backend": backend, "model": model, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put_many(self, items: dict[str, str]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", items.items())

    def close(self) -> None:
        self._db.close()
