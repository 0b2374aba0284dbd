"""`python -m lsp_server`: the language server over stdio with default settings (flags: see `fimtune serve`)."""

import sys

from fimtune.serve_cmd import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
