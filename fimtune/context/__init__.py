"""Cross-file context: the repository index (definitions, imports, line windows) and retrieval for a cursor.

One retriever serves the corpus builder (every example) and the language server (every request), so a model
sees in training exactly the kind of context it gets live. Its parts, bottom up:

- `files`: one file's entry (`index_file`, pure, runs in worker processes): definitions as compact stubs, import
  specifiers as written, line windows of identifier tokens.
- `imports`: per-language rules resolving an import specifier to files of the same repository.
- `store`: the BM25 store of line windows, updated one file at a time, ranked by content only.
- `retrieval`: `RepoIndex`, a repository's files, imports and windows, and the policy of `retrieve`.
"""

from fimtune.context.files import Definition, FileIndex, Window, imports_of, index_file, tokenize
from fimtune.context.retrieval import LINES_MAX_CHARS, RepoIndex

__all__ = [
    "LINES_MAX_CHARS",
    "Definition",
    "FileIndex",
    "RepoIndex",
    "Window",
    "imports_of",
    "index_file",
    "tokenize",
]
