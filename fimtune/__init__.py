"""fimtune: repositories in, a fill-in-the-middle code completion model out, served over LSP."""

__version__ = "0.1.0"

# Version of the on-disk corpus format (manifest.json `format_version`). Readers refuse other versions.
CORPUS_FORMAT_VERSION = 1
